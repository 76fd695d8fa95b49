-- What a commit of a new `spec.rerunToken` does: a Failed run runs again, as a new attempt of the same run that
-- resumes from its last checkpoint. The value only has to be new: the time (UTC, to the second) is, and says when.
obj.spec.rerunToken = "argocd-" .. os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
