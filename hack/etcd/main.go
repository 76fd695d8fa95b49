// etcd for the local cluster, built from the official module. Debian's etcd 3.4.23 predates watch-progress
// requests (3.4.31), without which kube-apiserver refuses the streaming watch-lists that current client-go
// informers (kwok's among them) use, leaving them to catch up on slow relists.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
