"""A port of kstatus' rules for a generic resource (sigs.k8s.io/cli-utils pkg/kstatus/status: Compute and
checkGenericProperties in status.go and generic.go), which Flux's `wait: true`, kpt and cli-utils apply to any
custom resource without type-specific rules:

1. metadata.deletionTimestamp set                      -> Terminating
2. status.observedGeneration present and != generation -> InProgress (LatestGenerationNotObserved)
3. a condition Reconciling=True                        -> InProgress
4. a condition Stalled=True                            -> Failed
5. otherwise                                           -> Current (also when there is no status at all)

Ready is not read by these rules (Flux's own health checks for its kinds do; for other kinds kstatus decides).
"""


def compute(obj: dict) -> tuple[str, str]:
    """(status, message) as kstatus.Compute returns them for a resource of an unknown kind."""
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    if meta.get("deletionTimestamp"):
        return "Terminating", "Resource scheduled for deletion"
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    if generation is not None and observed is not None and observed != generation:
        return "InProgress", f"{obj.get('kind')} generation is {generation}, but latest observed generation is {observed}"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Reconciling" and condition.get("status") == "True":
            return "InProgress", condition.get("message", "")
        if condition.get("type") == "Stalled" and condition.get("status") == "True":
            return "Failed", condition.get("message", "")
    return "Current", "Resource is current"
