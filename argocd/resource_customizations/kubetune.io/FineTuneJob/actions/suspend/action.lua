-- What a commit of `spec.suspend: true` does: the run's pods stop (they checkpoint on SIGTERM).
obj.spec.suspend = true
return obj
