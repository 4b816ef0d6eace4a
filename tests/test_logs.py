"""Bounded logging: repeated lines rate-limited, twistd's rotated log files capped."""

from __future__ import annotations

from presenced import logs


def test_repeats_are_held_back_and_counted():
    now = [0.0]
    limiter = logs.RepeatLimiter(interval=60, clock=lambda: now[0])
    assert limiter.allow("full") == 0
    assert [limiter.allow("full") for _ in range(5)] == [None] * 5
    assert limiter.allow("other") == 0
    now[0] = 61
    assert limiter.allow("full") == 5


def test_key_table_stays_bounded():
    now = [0.0]
    limiter = logs.RepeatLimiter(interval=60, clock=lambda: now[0], max_keys=10)
    for i in range(1000):
        limiter.allow(i)
    assert len(limiter.seen) <= 10


def test_twistd_log_file_keeps_a_fixed_number_of_rotated_files(tmp_path):
    path = tmp_path / "presenced.log"
    options = {"logfile": str(path), "nodaemon": True, "logger": None, "syslog": False}
    logs.cap_twistd_log_file(options, rotate_bytes=1000, max_files=3)
    assert options["logger"] == "presenced.logs.capped_log_file"
    observer = logs.capped_log_file()
    for i in range(500):
        observer({"log_format": "line {i} " + "x" * 50, "i": i, "log_time": 0.0,
                  "log_level": None, "log_namespace": "test"})
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["presenced.log", "presenced.log.1", "presenced.log.2", "presenced.log.3"]


def test_stdout_and_the_operators_logger_are_left_alone():
    for options in ({"logfile": None, "nodaemon": True}, {"logfile": "-", "nodaemon": True},
                    {"logfile": "x.log", "logger": "my.logger"},
                    {"logfile": "x.log", "syslog": True}):
        before = dict(options)
        logs.cap_twistd_log_file(options, 1000, 3)
        assert options == before
