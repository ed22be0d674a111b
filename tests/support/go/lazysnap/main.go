// Command lazysnap runs Debian's stargz-snapshotter library as a containerd proxy snapshotter, and pulls
// images through it, for the project's lazy-pull tests and benchmark.
//
//	lazysnap serve -root DIR -address SOCK [-background-fetch] [-sync-cache]
//	lazysnap rpull -address CONTAINERD_SOCK [-namespace NS] [-snapshotter NAME] [-prefetch BYTES] REF
//
// Every registry is reached over plain HTTP: the tests' registries listen on loopback only.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containerd/containerd"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/reference"
	"github.com/containerd/containerd/remotes/docker"
	stargzfs "github.com/containerd/stargz-snapshotter/fs"
	fsconfig "github.com/containerd/stargz-snapshotter/fs/config"
	"github.com/containerd/stargz-snapshotter/fs/source"
	"github.com/containerd/stargz-snapshotter/snapshot"
	"google.golang.org/grpc"
)

func die(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "lazysnap: "+format+"\n", args...)
	os.Exit(2)
}

// plainHosts gives every registry one plain-HTTP host with its own client: the library's default hosts
// carry no client, and its fetcher would then use a nil transport.
func plainHosts(host string) ([]docker.RegistryHost, error) {
	client := &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	return docker.ConfigureDefaultRegistries(
		docker.WithPlainHTTP(func(string) (bool, error) { return true, nil }),
		docker.WithClient(client),
	)(host)
}

func main() {
	if len(os.Args) < 2 {
		die("usage: lazysnap serve|rpull ...")
	}
	switch os.Args[1] {
	case "serve":
		serve(os.Args[2:])
	case "rpull":
		rpull(os.Args[2:])
	default:
		die("unknown command %q", os.Args[1])
	}
}

func serve(args []string) {
	flags := flag.NewFlagSet("serve", flag.ExitOnError)
	root := flags.String("root", "", "state directory")
	address := flags.String("address", "", "unix socket to serve the snapshots API on")
	background := flags.Bool("background-fetch", false, "fetch whole layers in the background after a mount")
	syncCache := flags.Bool("sync-cache", false, "commit fetched data to the cache before the read returns")
	_ = flags.Parse(args)
	if *root == "" || *address == "" {
		die("serve needs -root and -address")
	}
	ctx := context.Background()
	// Background fetch downloads every layer whole seconds after a mount, so it is off unless asked for:
	// what a container start needs is what the tests measure.
	cfg := fsconfig.Config{NoBackgroundFetch: !*background, NoPrometheus: true}
	// By default the cache commits in the background, so a read soon after a prefetch may miss it and
	// fetch the same bytes again; counts that must be exact ask for synchronous commits.
	cfg.DirectoryCacheConfig.SyncAdd = *syncCache
	getSources := source.FromDefaultLabels(func(spec reference.Spec) ([]docker.RegistryHost, error) {
		return plainHosts(spec.Hostname())
	})
	fs, err := stargzfs.NewFilesystem(filepath.Join(*root, "stargz"), cfg, stargzfs.WithGetSources(getSources))
	if err != nil {
		die("filesystem: %v", err)
	}
	sn, err := snapshot.NewSnapshotter(ctx, filepath.Join(*root, "snapshotter"), fs, snapshot.AsynchronousRemove)
	if err != nil {
		die("snapshotter: %v", err)
	}
	if err := os.RemoveAll(*address); err != nil {
		die("socket: %v", err)
	}
	listener, err := net.Listen("unix", *address)
	if err != nil {
		die("listen: %v", err)
	}
	rpc := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(rpc, snapshotservice.FromSnapshotter(sn))

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-signals
		rpc.Stop()
	}()
	fmt.Println("ready")
	serveErr := rpc.Serve(listener)
	// Close unmounts every FUSE layer, so a stopped helper leaves no mount behind.
	if err := sn.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "lazysnap: close: %v\n", err)
	}
	if serveErr != nil {
		die("serve: %v", serveErr)
	}
}

func rpull(args []string) {
	flags := flag.NewFlagSet("rpull", flag.ExitOnError)
	address := flags.String("address", "", "containerd's socket")
	namespace := flags.String("namespace", "default", "containerd namespace")
	snapshotter := flags.String("snapshotter", "stargz", "the proxy snapshotter's name in containerd's config")
	// ctr-remote's value: it applies only to layers without a landmark, which our converters never write.
	prefetch := flags.Int64("prefetch", 10<<20, "bytes to prefetch of a layer that has no prefetch landmark")
	_ = flags.Parse(args)
	if *address == "" || flags.NArg() != 1 {
		die("usage: lazysnap rpull -address SOCK [-namespace NS] REF")
	}
	ref := flags.Arg(0)
	client, err := containerd.New(*address, containerd.WithTimeout(30*time.Second))
	if err != nil {
		die("connect: %v", err)
	}
	defer client.Close()
	ctx := namespaces.WithNamespace(context.Background(), *namespace)
	ctx, done, err := client.WithLease(ctx)
	if err != nil {
		die("lease: %v", err)
	}
	defer done(ctx) //nolint:errcheck
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: plainHosts})
	// The labels handler tells the snapshotter where each layer comes from; with them, unpacking a layer
	// becomes a remote mount instead of a download.
	image, err := client.Pull(ctx, ref,
		containerd.WithResolver(resolver),
		containerd.WithPullUnpack,
		containerd.WithPullSnapshotter(*snapshotter),
		containerd.WithImageHandlerWrapper(source.AppendDefaultLabelsHandlerWrapper(ref, *prefetch)),
	)
	if err != nil {
		die("pull %s: %v", ref, err)
	}
	fmt.Println(image.Target().Digest)
}
