// The local cluster's OCI registry: the CNCF distribution registry (what Docker Hub and most registries run),
// built from the official module. Upstream's cmd/registry/main.go, less what a loopback registry never uses:
// only the filesystem storage driver is linked (upstream also links Azure, GCS, S3 and CloudFront, a large build),
// and no auth or pull-through proxy (the registry listens on 127.0.0.1 only).
package main

import (
	"github.com/distribution/distribution/v3/registry"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
)

func main() {
	// As upstream: the two registered commands exit non-zero themselves on failure.
	// nolint:errcheck
	registry.RootCmd.Execute()
}
