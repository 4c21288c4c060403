"""What operators see: live progress, status while running, Flower's task metrics."""

from __future__ import annotations

import dataclasses
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
import urllib.request

from .conftest import DATA_ROOT, PORT_SHIFT, chunk_consumers_paused, run_k2


def run_on_terminal(*args: str, timeout_s: float = 300, columns: int = 200) -> tuple[int, str]:
    """Run `python -m k2jobs ...` with a pseudo-terminal as stdout and stderr; return exit code and screen."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "k2jobs", *args],
        stdout=slave,
        stderr=slave,
        stdin=subprocess.DEVNULL,
        cwd=DATA_ROOT,
        env={**os.environ, "COLUMNS": str(columns)},
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(30), b"".join(chunks).decode("utf-8", "replace")


def test_submit_on_a_terminal_shows_live_progress(stack) -> None:  # type: ignore[no-untyped-def]
    code, screen = run_on_terminal("submit", "sample", "--again", "--chunk-rows", "10000")
    assert code == 0, screen
    percentages = {int(p) for p in re.findall(r"(\d+)%", screen)}
    assert 100 in percentages
    assert "170332/170332" in screen  # rows published of total
    assert re.search(r"chunks \d+/22", screen)  # 18 chunks for the big files, 1 for each small one
    assert "SUCCEEDED" in screen


def test_live_progress_fits_an_80_column_terminal_without_cutting_numbers(stack) -> None:  # type: ignore[no-untyped-def]
    code, screen = run_on_terminal("submit", "sample", "--again", "--chunk-rows", "10000", columns=80)
    assert code == 0, screen
    lines = [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line) for line in re.split(r"[\r\n]+", screen)]
    live = [line for line in lines if re.search(r"\d+/170332 rows", line)]
    assert live, screen
    assert any("100% 170332/170332 rows • chunks 22/22 • rejected 0" in line for line in live), live[-3:]
    assert all(len(line.rstrip()) <= 80 for line in live), max(live, key=len)
    assert "…" not in screen  # nothing cut short


def test_submit_without_a_terminal_logs_plain_lines(stack) -> None:  # type: ignore[no-untyped-def]
    done = run_k2("submit", "sample", "--again")
    assert done.returncode == 0
    assert "\x1b[" not in done.stderr  # no terminal control codes in logs
    assert "Traceback" not in done.stderr
    assert re.search(r"job \S+ SUCCEEDED .*170332 rows, 170332 published, 0 rejected", done.stdout)


def test_status_while_running_shows_rows_and_chunks(stack, ledger) -> None:  # type: ignore[no-untyped-def]
    with chunk_consumers_paused():  # hold the job at its start
        done = run_k2("submit", "sample", "--again", "--no-wait", "--json", "--chunk-rows", "5000")
        job_id = json.loads(done.stdout)["job_id"]
        status = json.loads(run_k2("status", job_id, "--json", check=True).stdout)
        assert status["status"] == "running"
        assert (status["rows"], status["rows_done"], status["chunks"], status["chunks_done"]) == (170_332, 0, 39, 0)
        text = run_k2("status", job_id, check=True).stdout
        assert f"job {job_id} running: 0/170332 rows (0.0%)" in text
        assert "chunks 0/39" in text
    final = run_k2("status", job_id, "--wait", "--json")
    assert final.returncode == 0
    assert json.loads(final.stdout)["totals"]["published"] == 170_332
    assert ledger.progress(job_id) == 170_332  # per-chunk progress adds up to every row
    meta = ledger.job_meta(job_id)  # and the counters a waiting client reads instead of every chunk agree
    assert (int(meta["rows_done"]), int(meta["chunks_done"]), int(meta["rejected"])) == (170_332, 39, 0)
    assert json.loads(run_k2("status", job_id, "--json").stdout)["status"] == "succeeded"


def test_progress_line_keeps_every_number_whole_at_any_width() -> None:
    from k2jobs.jobs.progress import progress_line
    from k2jobs.jobs.waiting import Progress

    big = Progress("j", "running", 9_999_999_999, 1_234_567_890, 5000, 1234, 17, 12.0)
    for width in range(32, 200):  # parts are left out whole, never cut
        bar, text = progress_line(big, width)
        assert len(text) + (bar + 1 if bar else 0) <= width
        assert text.startswith(" 12% 1234567890/9999999999 rows"), width
        if width >= 80:
            assert text.startswith(" 12% 1234567890/9999999999 rows • chunks 1234/5000 • rejected 17"), width
    bar, text = progress_line(big, 200)
    assert (bar, text.endswith("0:01:25 left • 0:00:12")) == (40, True)


def test_flower_metrics_list_succeeded_k2jobs_tasks(stack) -> None:  # type: ignore[no-untyped-def]
    assert run_k2("submit", "sample", "--again").returncode == 0
    url = stack["flower"]["url"] + "/metrics"
    deadline = time.monotonic() + 30
    found: list[str] = []
    while time.monotonic() < deadline and not found:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        found = [
            line
            for line in text.splitlines()
            if 'task="k2jobs.process_chunk"' in line and 'type="task-succeeded"' in line
        ]
        time.sleep(0.5)
    assert found, "Flower's /metrics has no succeeded k2jobs.process_chunk events"
    assert float(found[0].rsplit(" ", 1)[1]) >= 1


def test_stack_down_stops_flower_soon_when_redis_died_first(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """After a Redis crash Flower ignores SIGTERM: its thread that asks workers to send events retries the
    publish for ever, and Python waits for that thread on exit. `stack down` must not wait a minute for it."""
    from k2jobs.config import load_settings
    from k2jobs.stack.control import Stack
    from k2jobs.stack.processes import wait_until_ready

    redis_port, flower_port = 16382 + PORT_SHIFT, 15556 + PORT_SHIFT
    env = {
        **os.environ,
        "K2_STACK_DIR": str(tmp_path / "stack"),
        "K2_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "K2_FLOWER_PORT": str(flower_port),
    }
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    # Flower reads Redis's address from its environment, as under `stack up`
    flower = dataclasses.replace(Stack(load_settings(env)).flower_service(), env=env)
    try:
        flower.start()
        wait_until_ready("Flower", flower.ready, flower, timeout_s=60)
        # Flower asks the workers to send events every 5 s. The first call, with Redis up, leaves a connection in
        # its pool; the next, once Redis is gone, retries to reconnect it and never returns.
        time.sleep(6)
        redis.kill()
        redis.wait(10)
        deadline = time.monotonic() + 30
        while "Failed to capture events" not in flower.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "Failed to capture events" in flower.log.read_text(), "Flower did not notice Redis was gone"
        time.sleep(6)
        started = time.monotonic()
        down = run_k2("stack", "down", env=env, timeout=120)
        took = time.monotonic() - started
        assert down.returncode == 0, down.stderr
        assert flower.pid() is None, "Flower still runs after `stack down`"
        assert took < 20, f"`stack down` took {took:.1f}s with Redis gone"
    finally:
        pid = flower.pid()
        if pid is not None:
            os.killpg(pid, 9)
        redis.kill()
        redis.wait(10)


def test_ports_clients_may_take_are_those_in_the_ephemeral_range_and_not_reserved(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from k2jobs.stack.processes import ports_clients_may_take

    (tmp_path / "ip_local_port_range").write_text("32768\t60999\n")
    (tmp_path / "ip_local_reserved_ports").write_text("39092-39093,40000\n")
    ports = [9092, 32767, 32768, 39092, 39093, 39094, 40000, 60999, 61000]
    assert ports_clients_may_take(ports, tmp_path) == [32768, 39094, 60999]
    (tmp_path / "ip_local_reserved_ports").write_text("\n")
    assert ports_clients_may_take([39092], tmp_path) == [39092]
    assert ports_clients_may_take([39092], tmp_path / "nowhere") == []  # no such files: nothing to say


def test_stack_up_warns_of_ports_in_the_ephemeral_range(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """Before it starts anything: this machine's own range decides (Linux's default is 32768-60999)."""
    from k2jobs.config import load_settings
    from k2jobs.stack.control import Stack
    from k2jobs.stack.processes import ports_clients_may_take

    env = {
        "K2_STACK_DIR": str(tmp_path),
        "K2_KAFKA_BOOTSTRAP": "127.0.0.1:39092",
        "K2_REDIS_URL": "redis://127.0.0.1:6379/0",
    }
    expected = ports_clients_may_take([39092, 39093])
    with caplog.at_level("WARNING", logger="k2jobs.stack.control"):
        Stack(load_settings(env))._warn_of_ephemeral_ports()
    if expected:
        assert "ports 39092, 39093 are in the kernel's ephemeral port range" in caplog.text
    else:
        assert "ephemeral" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="k2jobs.stack.control"):
        Stack(load_settings({**env, "K2_KAFKA_BOOTSTRAP": "127.0.0.1:9092"}))._warn_of_ephemeral_ports()
    assert "ephemeral" not in caplog.text


def test_a_service_just_started_is_found_by_its_pid_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`Service.start` returns once the new process shows its marker, so `pid()` right after a start finds it.

    Popen returns before the kernel has set the child's new command line (CI once took a starting Flower for one
    that had exited), and redis-server shows its marker only once it has set its title. Here the process shows its
    marker 0.3 s after the start: a shell that sleeps, then execs the command that holds it."""
    import signal
    import sys

    from k2jobs.stack.processes import Service

    marker = "--k2jobs-test-service"
    late = 'sleep 0.3; exec "$0" -c "import time; time.sleep(30)" "$K2_TEST_MARKER"'
    service = Service(
        "late",
        ["sh", "-c", late, sys.executable],
        tmp_path / "late.log",
        tmp_path / "late.pid",
        marker,
        bool,
        {**os.environ, "K2_TEST_MARKER": marker},
    )
    pid = service.start()
    try:
        assert service.pid() == pid, "a service just started was taken for one that is not running"
    finally:
        os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
