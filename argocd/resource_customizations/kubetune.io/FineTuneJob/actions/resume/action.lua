-- What a commit of `spec.suspend: false` does: the run resumes from its last checkpoint.
obj.spec.suspend = false
return obj
