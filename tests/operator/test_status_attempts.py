"""Status details that must not mislead: attempts survive deleted pods; no loss or ETA before the first step."""
from kubetune.operator import runs
from kubetune.operator.status import compute_status
from tests.operator.test_children import ftj
from tests.operator.test_status import NOW, k8s_job, pod


def test_a_deleted_and_replaced_pod_counts_as_a_restart():
    job = ftj()
    run = runs.current_run(job)
    # The first pod was deleted mid-run (it exited 75 after its checkpoint); only its replacement is listed.
    running, _ = compute_status(job, run, k8s_job(active=1, failed=1), [pod("Running")], None, NOW)
    done, _ = compute_status(job, run, k8s_job(("Complete", "Completed"), succeeded=1, failed=1),
                             [pod("Succeeded", exit_code=0)], None, NOW)
    assert (running.attempts, running.restarts) == (done.attempts, done.restarts) == (2, 1)


def test_one_pod_is_one_attempt():
    job = ftj()
    status, _ = compute_status(job, runs.current_run(job), k8s_job(active=1), [pod("Running")], None, NOW)
    assert (status.attempts, status.restarts) == (1, 0)


def test_a_sample_before_the_first_step_reports_no_loss_and_no_eta():
    job = ftj()
    run = runs.current_run(job)
    early = {"step": 0, "total_steps": 30, "train_loss": 0.0, "eta_seconds": 0.0}
    status, _ = compute_status(job, run, k8s_job(active=1), [pod("Running")], early, NOW)
    assert status.progress.step == 0 and status.progress.eta_seconds is None
    assert status.metrics is None or status.metrics.train_loss is None
    later, _ = compute_status(job, run, k8s_job(active=1), [pod("Running")],
                              {**early, "step": 3, "train_loss": 2.5, "eta_seconds": 40.0}, NOW)
    assert (later.progress.step, later.progress.eta_seconds, later.metrics.train_loss) == (3, 40, 2.5)
