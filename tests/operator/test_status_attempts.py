"""Attempts and restarts survive the pods they count: a deleted pod is gone from the API, its Job remembers it."""
from kubetune.operator import children
from kubetune.operator.status import compute_status
from tests.operator.test_children import ftj
from tests.operator.test_status import NOW, k8s_job, pod


def test_a_deleted_and_replaced_pod_counts_as_a_restart():
    job = ftj()
    run = children.current_run(job)
    # The first pod was deleted mid-run (it exited 75 after its checkpoint); only its replacement is listed.
    running, _ = compute_status(job, run, k8s_job(active=1, failed=1), [pod("Running")], None, NOW)
    done, _ = compute_status(job, run, k8s_job(("Complete", "Completed"), succeeded=1, failed=1),
                             [pod("Succeeded", exit_code=0)], None, NOW)
    assert (running.attempts, running.restarts) == (done.attempts, done.restarts) == (2, 1)


def test_one_pod_is_one_attempt():
    job = ftj()
    status, _ = compute_status(job, children.current_run(job), k8s_job(active=1), [pod("Running")], None, NOW)
    assert (status.attempts, status.restarts) == (1, 0)
