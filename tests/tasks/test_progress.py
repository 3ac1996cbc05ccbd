"""tasks/progress.py: the ETA of a progress artifact, on a clock the test drives."""

from tasks.progress import Eta, duration_text


def test_the_eta_comes_from_the_rate_since_the_first_report():
    now = [100.0]
    eta = Eta(1_000, clock=lambda: now[0])
    assert eta.update(50) == "ETA -"  # start-up before the first report is not the rate
    now[0] += 10.0
    assert eta.update(150) == "ETA 1 min 25 s"  # 100 units in 10 s, 850 to go
    now[0] += 5.0
    assert eta.update(250) == "ETA 56 s"  # 200 in 15 s: 750 to go at 13.3/s
    assert eta.update(1_000) == "done"


def test_durations_read_as_a_person_writes_them():
    assert [duration_text(s) for s in (0.4, 59.6, 61, 3599, 3600, 7325)] == [
        "0 s",
        "1 min 00 s",
        "1 min 01 s",
        "59 min 59 s",
        "1 h 00 min",
        "2 h 02 min",
    ]
