"""Locust users for causerec: talk to the service over HTTP only.

    locust -f loadtests/locustfile.py --headless -H http://127.0.0.1:8000 -u 16 -r 16 -t 30s \
        RecommendUser EventsUser --recommend-weight 9 --events-weight 1 --id-users 10000 --id-items 100000

Ids follow the synthetic generator: users u0..u{N-1}; items from --catalog (a bundle's catalog.json),
--items-file (one id per line) or i0..i{M-1}. Name the user classes to
run (RecommendUser, EventsUser, MixedUser, NoopUser); without names, the weights choose the mix of
RecommendUser and EventsUser; MixedUser sends both routes in the weights' ratio.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from typing import Any

from locust import FastHttpUser, constant, constant_throughput, events, task

_event_ids = itertools.count()


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--id-users", type=int, default=1000, help="known user ids are u0..u{N-1}")
    parser.add_argument("--id-items", type=int, default=1000, help="known item ids are i0..i{M-1}")
    parser.add_argument(
        "--items-file", default="", help="known item ids, one per line (overrides --id-items)"
    )
    parser.add_argument(
        "--catalog", default="", help="a bundle's catalog.json: its items are the known ids (overrides both)"
    )
    parser.add_argument("--events-batch", type=int, default=100, help="events per POST /events")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--recommend-weight", type=int, default=9)
    parser.add_argument("--events-weight", type=int, default=1)
    parser.add_argument("--api-key", default="", help="sent as X-API-Key when set")
    parser.add_argument(
        "--pace", type=float, default=0.0, help="requests/s per simulated user (0: closed loop, no wait)"
    )
    parser.add_argument(
        "--arrivals",
        choices=("steady", "random"),
        default="steady",
        help="with --pace: a request every 1/pace s, or at random times with that mean (Poisson)",
    )


ITEMS: list[str] = []


@events.init.add_listener
def _setup(environment: Any, **_: Any) -> None:
    opts = environment.parsed_options
    if opts is None:
        return
    RecommendUser.weight = opts.recommend_weight
    EventsUser.weight = opts.events_weight
    if opts.pace:
        steady = opts.arrivals == "steady"
        _Base.wait_time = constant_throughput(opts.pace) if steady else poisson_throughput(opts.pace)
    if opts.catalog:
        with open(opts.catalog) as fh:
            ITEMS.extend(str(i) for i in json.load(fh)["items"])
    elif opts.items_file:
        with open(opts.items_file) as fh:
            ITEMS.extend(line.strip() for line in fh if line.strip())
    else:
        ITEMS.extend(f"i{n}" for n in range(opts.id_items))


def poisson_throughput(rate: float) -> Any:
    """Each simulated user starts requests at the times of a Poisson process of ``rate`` (a user that
    falls behind catches up), so N users together send a Poisson stream of N x rate: independent
    clients, not N clocks ticking in step, whose requests arrive in bursts."""

    def wait_time(user: Any) -> float:
        now = time.monotonic()
        due = getattr(user, "_due", now) + random.expovariate(rate)
        user._due = due
        return max(0.0, due - now)

    return wait_time


class _Base(FastHttpUser):
    abstract = True
    wait_time = constant(0)  # closed loop: each simulated user sends its next request at once

    def headers(self) -> dict[str, str]:
        key = self.environment.parsed_options.api_key
        return {"X-API-Key": key} if key else {}


def recommend(user: _Base) -> None:
    opts = user.environment.parsed_options
    body = {"user_id": f"u{random.randrange(opts.id_users)}", "k": opts.k}
    user.client.post("/recommend", json=body, headers=user.headers(), name="/recommend")


class RecommendUser(_Base):
    tasks = [recommend]


def post_events(user: _Base) -> None:
    opts = user.environment.parsed_options
    now = time.time()
    batch = [
        {
            "user_id": f"u{random.randrange(opts.id_users)}",
            "item_id": random.choice(ITEMS),
            "action": random.choice(("view", "like")),
            "timestamp": now,
            "event_id": f"lt-{next(_event_ids)}-{random.getrandbits(32)}",
        }
        for _ in range(opts.events_batch)
    ]
    with user.client.post(
        "/events", json={"events": batch}, headers=user.headers(), name="/events", catch_response=True
    ) as response:
        if response.status_code == 422:  # an id outside the catalogue would be our bug, not the server's
            response.failure(response.text[:200])


class EventsUser(_Base):
    tasks = [post_events]


class MixedUser(_Base):
    """Reads and event posts in a fixed ratio per simulated user (--recommend-weight to
    --events-weight), whatever either costs: with separate users per route a closed loop would post
    events as fast as they are answered, and a cheaper /events would mean another traffic mix."""

    tasks = [recommend, post_events]  # weighted by the options in on_start

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.tasks = [recommend] * opts.recommend_weight + [post_events] * opts.events_weight


class NoopUser(_Base):
    weight = 1

    @task
    def noop(self) -> None:
        self.client.post("/noop", json={}, name="/noop")
