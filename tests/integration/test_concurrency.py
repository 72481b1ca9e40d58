"""100 concurrent HTTP clients posting events: exact counts, no duplicates, nothing lost."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import redis

from service.store_codec import decode_state, user_keys
from tests.integration.conftest import WRITE_KEY

pytestmark = pytest.mark.integration
CLIENTS, POSTS, PER_POST = 100, 4, 3


async def _client(http: httpx.AsyncClient, client: int, user_of: str) -> tuple[int, int]:
    accepted = duplicates = 0
    for p in range(POSTS):
        events = [
            {
                "user_id": user_of,
                "item_id": f"i{1 + (client + p + j) % 40}",
                "action": "view",
                "timestamp": 10_000 + client * 100 + p * 10 + j,
                "event_id": f"c{client}-p{p}-e{j}",
            }
            for j in range(PER_POST)
        ]
        for _ in range(2):  # every post is sent twice, as a client retrying after a timeout would
            r = await http.post("/events", json={"events": events})
            assert r.status_code == 200, r.text
            accepted += r.json()["accepted"]
            duplicates += r.json()["duplicates"]
    return accepted, duplicates


async def _run(url: str, users: list[str]) -> list[tuple[int, int]]:
    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(
        base_url=url, headers={"X-API-Key": WRITE_KEY}, limits=limits, timeout=60
    ) as http:
        return await asyncio.gather(*(_client(http, c, users[c]) for c in range(CLIENTS)))


@pytest.mark.parametrize("shared", [True, False], ids=["same-user", "disjoint-users"])
def test_100_clients_exact_counts(api, redis_server, shared) -> None:  # type: ignore[no-untyped-def]
    users = [f"conc-{shared}-{0 if shared else c}" for c in range(CLIENTS)]
    results = asyncio.run(_run(api.url, users))
    unique = CLIENTS * POSTS * PER_POST
    assert sum(a for a, _ in results) == unique
    assert sum(d for _, d in results) == unique  # each retry was recognised, none applied twice
    db = redis.Redis.from_url(redis_server.url)
    expected = {u: users.count(u) * POSTS * PER_POST for u in set(users)}
    for user, count in expected.items():
        # GET /users folds the events still in the user's log into the state, as any read does.
        assert (
            httpx.get(f"{api.url}/users/{user}", headers={"X-API-Key": WRITE_KEY}).json()["events"] == count
        )
        keys = user_keys("api", user)
        state = decode_state(db.get(keys.state))  # type: ignore[arg-type]
        assert state.next_seq == count  # exactly the unique events, in any commit order
        assert db.zcard(keys.dedup) == count
        window = [e.ts for e in state.recent]
        assert window == sorted(window)
        assert len(set(window)) == len(window)  # no event stored twice
