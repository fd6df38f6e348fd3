// Package kubenode starts a real single-node Kubernetes cluster for tests:
// etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd,
// the kubelet and kube-proxy (v1.37.2, built into .deps/tools by
// scripts/build-tools.sh; containerd, runc and the CNI plugins from
// Debian, installed by scripts/install-tools.sh), as child processes of the
// test with their state in one folder, /tmp/kubenode-<prefix>.
//
// Ownership: everything a Node starts or creates is named with its unique
// prefix (kn + 6 hex digits) and belongs to it: its processes (stopped by
// PID), its folder, its bridge <prefix>-br and the pod and Service subnets
// routed there, its cgroup root /<prefix> in every hierarchy, and what the
// components add outside that (iptables chains, CRI network namespaces,
// /run/containerd, /var/lib/kubelet, /var/lib/cni, sysctls), which teardown
// finds by comparing with a snapshot taken before the start. One node runs
// on a machine at a time (an flock on /run/lock/batchgate-kubenode.lock):
// kube-proxy's KUBE-* chains and the kubelet's fixed paths cannot be shared.
// Traffic stays on loopback and the bridge's own addresses.
package kubenode

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/batchgate/batchgate/internal/testenv"
)

const (
	// Version is the Kubernetes version of the tools the node runs.
	Version = "v1.37.2"
	// PauseImage is the sandbox image: built here from pause/pause.c.
	PauseImage = "registry.k8s.io/pause:3.10"
	lockPath   = "/run/lock/batchgate-kubenode.lock"
	cniBinDir  = "/usr/lib/cni" // Debian's containernetworking-plugins
)

//go:embed pause/pause.c
var pauseSource []byte

// Options tunes Start; the zero value is the usual setting.
type Options struct {
	// Tools is the folder holding etcd, kube-apiserver,
	// kube-controller-manager, kube-scheduler, kubelet, kube-proxy and
	// kubectl; default <repository>/.deps/tools.
	Tools string
	// Timeout bounds the bring-up, from the start of etcd to a Ready node
	// with a working kube-proxy; default 3 minutes.
	Timeout time.Duration
	// LockTimeout bounds the wait for another node on this machine to
	// finish; default 8 minutes.
	LockTimeout time.Duration
}

// Phase is one step of the bring-up and the time since Start began.
type Phase struct {
	Name string
	At   time.Duration
}

// Node is a running single-node cluster. Its fields are read-only.
type Node struct {
	Name        string // the node's name, also the unique prefix
	Dir         string // the node's state folder
	Kubeconfig  string // admin (system:masters) kubeconfig
	NodeIP      string // the bridge's address: the API server, kubelet and node IP
	PodCIDR     string
	ServiceCIDR string
	Bridge      string
	Phases      []Phase
	BringUp     time.Duration // Start to a usable node

	t         testing.TB
	tools     string
	begin     time.Time
	host      *hostState
	procs     []*proc
	sock      string // containerd's socket
	apiURL    string
	client    *http.Client
	lock      *os.File
	cgroups   []string // our cgroup roots, one per hierarchy
	stopped   bool
	cgroupSet bool
	stale     bool // a dead test binary's node, torn down by sweepStale
}

type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Missing returns why a node cannot start on this machine ("" when it can):
// not root, a tool not built, or a package not installed.
func Missing(tools string) string {
	if os.Geteuid() != 0 {
		return "kubenode: needs root (containerd, the kubelet, iptables, cgroups)"
	}
	for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"} {
		if _, err := os.Stat(filepath.Join(tools, name)); err != nil {
			return fmt.Sprintf("kubenode: %s not built in %s: run `make tools` (scripts/build-tools.sh)", name, tools)
		}
	}
	for _, name := range []string{"containerd", "containerd-shim-runc-v2", "ctr", "runc", "iptables", "ip6tables", "ip", "gcc"} {
		if _, err := exec.LookPath(name); err != nil {
			return fmt.Sprintf("kubenode: %s not installed: run `make tools` (scripts/install-tools.sh installs containerd, runc, containernetworking-plugins, iptables, gcc)", name)
		}
	}
	for _, name := range []string{"bridge", "host-local", "loopback", "portmap"} {
		if _, err := os.Stat(filepath.Join(cniBinDir, name)); err != nil {
			return fmt.Sprintf("kubenode: CNI plugin %s not in %s: run `make tools` (containernetworking-plugins)", name, cniBinDir)
		}
	}
	if len(cgroupMounts()) == 0 {
		return "kubenode: no cgroup hierarchy mounted"
	}
	return ""
}

// Required reports whether a node that cannot start fails the test rather
// than skipping it: in CI (CI=true) and with BATCHGATE_REQUIRE_KUBENODE=1.
func Required() bool {
	return os.Getenv("CI") == "true" || os.Getenv("BATCHGATE_REQUIRE_KUBENODE") == "1"
}

// DefaultTools is <repository>/.deps/tools.
func DefaultTools(t testing.TB) string { return filepath.Join(testenv.Root(t), ".deps", "tools") }

// Check skips the test, or fails it when Required, if a node cannot start
// here (see Missing); tests call it before their own preparations. It
// returns the tools folder (tools, or DefaultTools when tools is "").
func Check(t testing.TB, tools string) string {
	t.Helper()
	if tools == "" {
		tools = DefaultTools(t)
	}
	if why := Missing(tools); why != "" {
		if Required() {
			t.Fatalf("%s (required: CI=true or BATCHGATE_REQUIRE_KUBENODE=1)", why)
		}
		t.Skipf("%s; set BATCHGATE_REQUIRE_KUBENODE=1 to fail instead", why)
	}
	return tools
}

// Start brings a node up and registers its teardown with t.Cleanup (run
// even when the test fails, and when Start itself fails half-way). It skips
// the test when the machine cannot run a node (see Missing), or fails it
// when Required.
func Start(t testing.TB, opts Options) *Node {
	t.Helper()
	if opts.Timeout == 0 {
		opts.Timeout = 3 * time.Minute
	}
	if opts.LockTimeout == 0 {
		opts.LockTimeout = 8 * time.Minute
	}
	opts.Tools = Check(t, opts.Tools)

	var rnd [4]byte
	rand.Read(rnd[:])
	n := &Node{t: t, tools: opts.Tools, Name: "kn" + hex.EncodeToString(rnd[:3])}
	n.lockMachine(opts.LockTimeout)
	n.sweepStale()
	n.begin = time.Now()
	n.Dir = filepath.Join(os.TempDir(), "kubenode-"+n.Name)
	n.Bridge = n.Name + "-br"
	n.host = snapshotHost()
	t.Cleanup(func() {
		if t.Failed() {
			n.dumpLogs()
		}
		if err := n.Stop(); err != nil {
			t.Errorf("kubenode teardown: %v", err)
		}
		if left := n.Leftovers(); len(left) > 0 {
			t.Errorf("kubenode teardown left behind:\n  %s", strings.Join(left, "\n  "))
		}
	})
	deadline := n.begin.Add(opts.Timeout)
	if err := os.MkdirAll(n.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	must(t, writeJSON(filepath.Join(n.Dir, "host.json"), n.host))
	n.network()
	n.phase("bridge " + n.Bridge + " " + n.PodCIDR)

	p, err := newPKI(filepath.Join(n.Dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	svcIP := firstIP(n.ServiceCIDR)
	apiCert, apiKey, err := p.issue("apiserver", "kube-apiserver", nil,
		[]string{n.NodeIP, "127.0.0.1", svcIP, "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"})
	must(t, err)
	adminCert, adminKey, err := p.issue("admin", "batchgate-admin", []string{"system:masters"}, nil)
	must(t, err)
	kubeletCert, kubeletKey, err := p.issue("kubelet", "system:node:"+n.Name, []string{"system:nodes"}, nil)
	must(t, err)
	// The aggregator's client certificate, for API servers behind it (KEDA's
	// metrics adapter): they trust X-Remote-User from this name only.
	frontCert, frontKey, err := p.issue("front-proxy-client", "front-proxy-client", nil, nil)
	must(t, err)
	saKey, err := p.serviceAccountKey()
	must(t, err)

	// containerd first: it needs nothing else, and the pause image is
	// imported while the control plane starts.
	n.sock = filepath.Join(n.Dir, "containerd.sock")
	n.writeCNI()
	must(t, os.WriteFile(filepath.Join(n.Dir, "containerd.toml"), []byte(n.containerdConfig()), 0o644))
	n.start("containerd", "containerd", "--config", filepath.Join(n.Dir, "containerd.toml"))

	etcdPort, peerPort, apiPort := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	n.start("etcd", filepath.Join(n.tools, "etcd"), "--name", n.Name, "--data-dir", filepath.Join(n.Dir, "etcd"),
		"--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", etcdPort),
		"--advertise-client-urls", fmt.Sprintf("http://127.0.0.1:%d", etcdPort),
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peerPort),
		"--initial-advertise-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peerPort),
		"--initial-cluster", fmt.Sprintf("%s=http://127.0.0.1:%d", n.Name, peerPort),
		"--listen-metrics-urls", "", "--log-level", "warn")
	n.start("kube-apiserver", filepath.Join(n.tools, "kube-apiserver"),
		fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", etcdPort),
		"--bind-address="+n.NodeIP, "--advertise-address="+n.NodeIP, fmt.Sprintf("--secure-port=%d", apiPort),
		"--tls-cert-file="+apiCert, "--tls-private-key-file="+apiKey, "--client-ca-file="+p.caFile(),
		"--kubelet-client-certificate="+adminCert, "--kubelet-client-key="+adminKey,
		"--kubelet-preferred-address-types=InternalIP",
		"--authorization-mode=Node,RBAC",
		"--service-account-key-file="+saKey, "--service-account-signing-key-file="+saKey,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range="+n.ServiceCIDR, "--profiling=false",
		// The aggregation layer: requests to an APIService go to its
		// Service's endpoints (not the ClusterIP, which only kube-proxy's
		// rules on the pod network know), with the caller's identity in
		// X-Remote-* headers signed by the front-proxy certificate.
		"--enable-aggregator-routing=true", "--proxy-client-cert-file="+frontCert, "--proxy-client-key-file="+frontKey,
		"--requestheader-client-ca-file="+p.caFile(), "--requestheader-allowed-names=front-proxy-client",
		"--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-")

	n.apiURL = fmt.Sprintf("https://%s:%d", n.NodeIP, apiPort)
	n.client = httpClient(p.caFile(), adminCert, adminKey)
	n.Kubeconfig = filepath.Join(n.Dir, "admin.kubeconfig")
	must(t, writeKubeconfig(n.Kubeconfig, n.apiURL, p.caFile(), adminCert, adminKey))
	kubeletKubeconfig := filepath.Join(n.Dir, "kubelet.kubeconfig")
	must(t, writeKubeconfig(kubeletKubeconfig, n.apiURL, p.caFile(), kubeletCert, kubeletKey))

	// The pause image: gcc -static, packed here, imported into containerd.
	pauseC := filepath.Join(n.Dir, "pause.c")
	must(t, os.WriteFile(pauseC, pauseSource, 0o644))
	if out, err := command(time.Minute, "gcc", "-static", "-Os", "-s", "-o", filepath.Join(n.Dir, "pause"), pauseC); err != nil {
		t.Fatalf("building the pause image: %v\n%s", err, out)
	}
	pauseBin, err := os.ReadFile(filepath.Join(n.Dir, "pause"))
	must(t, err)
	pauseTar := filepath.Join(n.Dir, "pause.tar")
	must(t, WriteImage(pauseTar, PauseImage, []string{"/pause"}, "65535:65535", []File{{Name: "pause", Mode: 0o755, Data: pauseBin}}))
	n.waitFor("containerd", deadline, func() (bool, string) {
		out, err := n.ctr(5*time.Second, "version")
		return err == nil, string(out)
	})
	n.phase("containerd up")
	n.ImportImage(pauseTar)
	n.phase("pause image imported")

	n.waitFor("kube-apiserver /readyz", deadline, func() (bool, string) {
		code, body := n.get("/readyz")
		return code == 200, body
	})
	n.phase("kube-apiserver ready")

	kcmPort, schedPort := testenv.FreePort(t), testenv.FreePort(t)
	n.start("kube-controller-manager", filepath.Join(n.tools, "kube-controller-manager"),
		"--kubeconfig="+n.Kubeconfig, "--authentication-kubeconfig="+n.Kubeconfig, "--authorization-kubeconfig="+n.Kubeconfig,
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", kcmPort), "--leader-elect=false",
		"--service-account-private-key-file="+saKey, "--root-ca-file="+p.caFile(),
		"--use-service-account-credentials=false", "--profiling=false",
		// HPAs every 5 s (Kubernetes' default: 15 s): scaling tests wait less.
		"--horizontal-pod-autoscaler-sync-period=5s")
	n.start("kube-scheduler", filepath.Join(n.tools, "kube-scheduler"),
		"--kubeconfig="+n.Kubeconfig, "--authentication-kubeconfig="+n.Kubeconfig, "--authorization-kubeconfig="+n.Kubeconfig,
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", schedPort), "--leader-elect=false", "--profiling=false")

	kubeletPort, kubeletHealthz := testenv.FreePort(t), testenv.FreePort(t)
	n.makeCgroupRoot()
	kubeletConfig := filepath.Join(n.Dir, "kubelet.json")
	must(t, writeJSON(kubeletConfig, map[string]any{
		"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
		// These VMs have a cgroup v1 hierarchy, no systemd as PID 1, and swap
		// may be on: each setting was a start failure until set.
		"failCgroupV1": false, "cgroupDriver": "cgroupfs", "failSwapOn": false,
		"cgroupRoot":               "/" + n.Name,
		"containerRuntimeEndpoint": "unix://" + n.sock,
		"address":                  n.NodeIP, "port": kubeletPort, "readOnlyPort": 0,
		"healthzBindAddress": "127.0.0.1", "healthzPort": kubeletHealthz,
		"authentication": map[string]any{"anonymous": map[string]any{"enabled": false},
			"webhook": map[string]any{"enabled": true}, "x509": map[string]any{"clientCAFile": p.caFile()}},
		"authorization": map[string]any{"mode": "Webhook"},
		"podLogsDir":    filepath.Join(n.Dir, "pod-logs"),
		// The disk and memory are shared with the rest of the machine:
		// evict only when nearly nothing is left, never collect images.
		"evictionHard": map[string]string{"memory.available": "50Mi", "nodefs.available": "1%",
			"nodefs.inodesFree": "1%", "imagefs.available": "1%"},
		"imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
		"serializeImagePulls": false, "maxPods": 50,
		"resolvConf": "/etc/resolv.conf",
	}))
	n.start("kubelet", filepath.Join(n.tools, "kubelet"), "--config="+kubeletConfig,
		"--kubeconfig="+kubeletKubeconfig, "--root-dir="+filepath.Join(n.Dir, "kubelet"),
		"--hostname-override="+n.Name, "--node-ip="+n.NodeIP, "-v=1")

	proxyHealthz, proxyMetrics := testenv.FreePort(t), testenv.FreePort(t)
	proxyConfig := filepath.Join(n.Dir, "kube-proxy.json")
	must(t, writeJSON(proxyConfig, map[string]any{
		"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
		"clientConnection": map[string]any{"kubeconfig": n.Kubeconfig},
		"mode":             "iptables", "clusterCIDR": n.PodCIDR, "hostnameOverride": n.Name,
		"healthzBindAddress": fmt.Sprintf("127.0.0.1:%d", proxyHealthz),
		"metricsBindAddress": fmt.Sprintf("127.0.0.1:%d", proxyMetrics),
		// It cannot set the conntrack sysctls here: leave them as they are.
		"conntrack": map[string]any{"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
		// NodePorts on the bridge address only, never on localhost (which
		// needs route_localnet).
		"iptables":          map[string]any{"localhostNodePorts": false},
		"nodePortAddresses": []string{n.NodeIP + "/32"},
	}))
	n.start("kube-proxy", filepath.Join(n.tools, "kube-proxy"), "--config="+proxyConfig)

	n.waitFor("node "+n.Name+" Ready", deadline, n.nodeReady)
	n.phase("node Ready")
	n.waitFor("kube-proxy healthz", deadline, func() (bool, string) {
		code, body := httpGet(fmt.Sprintf("http://127.0.0.1:%d/healthz", proxyHealthz))
		return code == 200, body
	})
	n.phase("kube-proxy healthy")
	n.waitFor("the default ServiceAccount", deadline, func() (bool, string) {
		code, body := n.get("/api/v1/namespaces/default/serviceaccounts/default")
		return code == 200, body
	})
	n.BringUp = time.Since(n.begin)
	n.phase("default ServiceAccount")
	return n
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func (n *Node) phase(name string) {
	n.Phases = append(n.Phases, Phase{name, time.Since(n.begin).Round(10 * time.Millisecond)})
}

// lockMachine takes the machine-wide lock, waiting at most timeout.
func (n *Node) lockMachine(timeout time.Duration) {
	os.MkdirAll(filepath.Dir(lockPath), 0o755)
	f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		n.t.Fatal(err)
	}
	deadline := time.Now().Add(timeout)
	for {
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
			break
		}
		if time.Now().After(deadline) {
			f.Close()
			n.t.Fatalf("kubenode: another node held %s for %v", lockPath, timeout)
		}
		time.Sleep(500 * time.Millisecond)
	}
	n.lock = f
}

// network picks free /24s for pods and Services and makes the bridge, with
// the node's address and a route for the Service subnet, so that the
// control plane listens on it and the host reaches ClusterIPs through it.
func (n *Node) network() {
	routes, _ := command(10*time.Second, "ip", "-4", "route", "show", "table", "all")
	addrs, _ := command(10*time.Second, "ip", "-4", "addr", "show")
	used := string(routes) + string(addrs)
	var b [1]byte
	for range 100 {
		rand.Read(b[:])
		pod, svc := fmt.Sprintf("10.213.%d.", b[0]), fmt.Sprintf("10.214.%d.", b[0])
		if !strings.Contains(used, pod) && !strings.Contains(used, svc) {
			n.PodCIDR, n.ServiceCIDR, n.NodeIP = pod+"0/24", svc+"0/24", pod+"1"
			break
		}
	}
	if n.PodCIDR == "" {
		n.t.Fatal("kubenode: no free subnet in 10.213.0.0/16")
	}
	for _, args := range [][]string{
		{"link", "add", n.Bridge, "type", "bridge"},
		{"addr", "add", n.NodeIP + "/24", "dev", n.Bridge},
		{"link", "set", n.Bridge, "up"},
		{"route", "add", n.ServiceCIDR, "dev", n.Bridge, "src", n.NodeIP},
	} {
		if _, err := command(10*time.Second, "ip", args...); err != nil {
			n.t.Fatal(err)
		}
	}
}

func (n *Node) writeCNI() {
	dir := filepath.Join(n.Dir, "cni", "net.d")
	must(n.t, os.MkdirAll(dir, 0o755))
	must(n.t, writeJSON(filepath.Join(dir, "10-"+n.Name+".conflist"), map[string]any{
		"cniVersion": "0.4.0", "name": n.Name,
		"plugins": []any{
			map[string]any{"type": "bridge", "bridge": n.Bridge, "isGateway": true, "ipMasq": true, "hairpinMode": true,
				"ipam": map[string]any{"type": "host-local", "dataDir": filepath.Join(n.Dir, "cni", "ipam"),
					"ranges": []any{[]any{map[string]any{"subnet": n.PodCIDR, "gateway": n.NodeIP}}},
					"routes": []any{map[string]any{"dst": "0.0.0.0/0"}}}},
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
		},
	}))
}

// containerdConfig is containerd 1.6's configuration (version 2): state
// and root in the node's folder, the locally built sandbox image, and
// restrict_oom_score_adj, without which every sandbox fails here (these VMs
// drop CAP_SYS_RESOURCE, so runc cannot lower an OOM score).
func (n *Node) containerdConfig() string {
	d := n.Dir
	return fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = %q
[debug]
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = %q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = %q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
`, filepath.Join(d, "containerd", "root"), filepath.Join(d, "containerd", "state"), n.sock,
		filepath.Join(d, "containerd", "opt"), PauseImage, filepath.Join(d, "runc"), cniBinDir, filepath.Join(d, "cni", "net.d"))
}

// makeCgroupRoot creates /<name> in every cgroup hierarchy: the kubelet's
// cgroupRoot, so that the pods' cgroups are the node's own.
func (n *Node) makeCgroupRoot() {
	n.cgroupSet = true
	for _, m := range cgroupMounts() {
		d := filepath.Join(m, n.Name)
		if err := os.Mkdir(d, 0o755); err != nil && !os.IsExist(err) {
			n.t.Fatal(err)
		}
		n.cgroups = append(n.cgroups, d)
		// cpuset (v1) starts empty: no task could join it.
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if v, err := os.ReadFile(filepath.Join(m, f)); err == nil && exists(filepath.Join(d, f)) {
				os.WriteFile(filepath.Join(d, f), v, 0o644)
			}
		}
		// cgroup v2: give the children the controllers the kubelet needs.
		if v, err := os.ReadFile(filepath.Join(d, "cgroup.controllers")); err == nil {
			var on []string
			for _, c := range strings.Fields(string(v)) {
				on = append(on, "+"+c)
			}
			os.WriteFile(filepath.Join(d, "cgroup.subtree_control"), []byte(strings.Join(on, " ")), 0o644)
		}
	}
}

func (n *Node) start(name, bin string, args ...string) *proc {
	logPath := filepath.Join(n.Dir, "logs", name+".log")
	must(n.t, os.MkdirAll(filepath.Dir(logPath), 0o755))
	f, err := os.Create(logPath)
	must(n.t, err)
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// A safety net if the test binary dies: teardown is the real stop.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		n.t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); f.Close(); close(p.done) }()
	n.procs = append(n.procs, p)
	return p
}

func (n *Node) proc(name string) *proc {
	for _, p := range n.procs {
		if p.name == name {
			return p
		}
	}
	return nil
}

// stopProc sends SIGTERM to one process by its PID, then SIGKILL after
// grace; it returns once the process is reaped.
func (n *Node) stopProc(name string, grace time.Duration) {
	p := n.proc(name)
	if p == nil || p.exited() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.cmd.Process.Kill()
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
		}
	}
}

// waitFor polls cond until it holds, failing the test at deadline or as
// soon as one of the node's processes exits.
func (n *Node) waitFor(what string, deadline time.Time, cond func() (bool, string)) {
	n.t.Helper()
	for {
		ok, status := cond()
		if ok {
			return
		}
		for _, p := range n.procs {
			if p.exited() {
				n.t.Fatalf("kubenode: %s exited (%v) while waiting for %s; its log ends:\n%s", p.name, p.err, what, tail(p.log, 30))
			}
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("kubenode: %s not within the bring-up deadline (%v since start); last: %.500s", what, time.Since(n.begin).Round(time.Second), status)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (n *Node) nodeReady() (bool, string) {
	code, body := n.get("/api/v1/nodes/" + n.Name)
	if code != 200 {
		return false, body
	}
	var node struct {
		Status struct {
			Conditions []struct{ Type, Status, Message string }
		}
	}
	if err := json.Unmarshal([]byte(body), &node); err != nil {
		return false, err.Error()
	}
	for _, c := range node.Status.Conditions {
		if c.Type == "Ready" {
			return c.Status == "True", c.Message
		}
	}
	return false, "no Ready condition"
}

// get is a GET on the API server as the admin: status and body.
func (n *Node) get(path string) (int, string) {
	resp, err := n.client.Get(n.apiURL + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b)
}

func httpGet(url string) (int, string) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b)
}

func httpClient(ca, cert, key string) *http.Client {
	pool := x509.NewCertPool()
	if b, err := os.ReadFile(ca); err == nil {
		pool.AppendCertsFromPEM(b)
	}
	pair, _ := tls.LoadX509KeyPair(cert, key)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}}}}
}

func writeKubeconfig(path, server, ca, cert, key string) error {
	return writeJSON(path, map[string]any{
		"apiVersion": "v1", "kind": "Config", "current-context": "kubenode",
		"clusters": []any{map[string]any{"name": "kubenode", "cluster": map[string]any{"server": server, "certificate-authority": ca}}},
		"users":    []any{map[string]any{"name": "user", "user": map[string]any{"client-certificate": cert, "client-key": key}}},
		"contexts": []any{map[string]any{"name": "kubenode", "context": map[string]any{"cluster": "kubenode", "user": "user"}}},
	})
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// firstIP is the first host address of a /24 written as a.b.c.0/24.
func firstIP(cidr string) string {
	ip, _, _ := net.ParseCIDR(cidr)
	ip = ip.To4()
	return net.IPv4(ip[0], ip[1], ip[2], ip[3]+1).String()
}

func tail(path string, lines int) string {
	b, _ := os.ReadFile(path)
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

func (n *Node) dumpLogs() {
	for _, p := range n.procs {
		n.t.Logf("kubenode: %s log (last 40 lines):\n%s", p.name, tail(p.log, 40))
	}
}

// Kubectl runs kubectl as the admin, with a deadline of two minutes.
func (n *Node) Kubectl(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(n.tools, "kubectl"), append([]string{"--kubeconfig", n.Kubeconfig}, args...)...)
	return cmd.CombinedOutput()
}

// KubectlT is Kubectl that fails the test on an error.
func (n *Node) KubectlT(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.Kubectl(args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (n *Node) ctr(timeout time.Duration, args ...string) ([]byte, error) {
	return command(timeout, "ctr", append([]string{"--address", n.sock, "--namespace", "k8s.io"}, args...)...)
}

// ImportImage imports a docker-archive or OCI tarball into the node's
// containerd, where the kubelet finds it (pods use imagePullPolicy Never or
// IfNotPresent with the exact tag: no registry is reachable).
func (n *Node) ImportImage(archive string) {
	n.t.Helper()
	if out, err := n.ctr(5*time.Minute, "images", "import", archive); err != nil {
		n.t.Fatalf("kubenode: import %s: %v\n%s", archive, err, out)
	}
}

// ImportPodmanImage saves a podman image (podman save, docker-archive) and
// imports it into the node.
func (n *Node) ImportPodmanImage(ref string) {
	n.t.Helper()
	f := filepath.Join(n.Dir, "podman-"+strings.NewReplacer("/", "_", ":", "_").Replace(ref)+".tar")
	if out, err := command(5*time.Minute, "podman", "save", "--format", "docker-archive", "-o", f, ref); err != nil {
		n.t.Fatalf("kubenode: %v\n%s", err, out)
	}
	n.ImportImage(f)
	os.Remove(f)
}

// Kill sends SIGKILL to one of the node's components (a test of the
// teardown's fallbacks: the components then leave their state behind).
func (n *Node) Kill(name string) {
	if p := n.proc(name); p != nil && !p.exited() {
		p.cmd.Process.Kill()
		<-p.done
	}
}

// Stop tears the node down; Start's cleanup calls it, and it runs once.
// Each step runs even when an earlier one failed; the errors are joined.
func (n *Node) Stop() error {
	if n.stopped {
		return nil
	}
	n.stopped = true
	defer func() {
		if n.lock != nil {
			syscall.Flock(int(n.lock.Fd()), syscall.LOCK_UN)
			n.lock.Close()
		}
	}()
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	// Nothing may recreate or reschedule pods while they go.
	n.stopProc("kube-controller-manager", 10*time.Second)
	n.stopProc("kube-scheduler", 10*time.Second)
	// The kubelet stops the pods' sandboxes itself (CNI DEL: the veth, the
	// IP, the CNI-* chains, the network namespace) when the pods are gone.
	if p, k, c := n.proc("kube-apiserver"), n.proc("kubelet"), n.proc("containerd"); p != nil && !p.exited() && k != nil && !k.exited() && c != nil && !c.exited() {
		n.Kubectl("delete", "pods", "--all", "--all-namespaces", "--force", "--grace-period=0", "--wait=false")
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			out, err := n.ctr(5*time.Second, "tasks", "ls", "-q")
			if err == nil && strings.TrimSpace(string(out)) == "" && len(n.newNetns()) == 0 {
				break
			}
			time.Sleep(300 * time.Millisecond)
		}
	}
	n.stopProc("kube-proxy", 10*time.Second)
	n.stopProc("kubelet", 10*time.Second)
	// What the kubelet left: tasks killed, then tasks and containers deleted.
	if c := n.proc("containerd"); c != nil && !c.exited() {
		if out, err := n.ctr(10*time.Second, "tasks", "ls", "-q"); err == nil {
			for _, id := range strings.Fields(string(out)) {
				n.ctr(10*time.Second, "tasks", "kill", "--signal", "SIGKILL", id)
			}
			for _, id := range strings.Fields(string(out)) {
				n.ctr(20*time.Second, "tasks", "delete", "--force", id)
			}
		}
		if out, err := n.ctr(10*time.Second, "containers", "ls", "-q"); err == nil {
			for _, id := range strings.Fields(string(out)) {
				n.ctr(20*time.Second, "containers", "delete", id)
			}
		}
	}
	for _, name := range []string{"containerd", "kube-apiserver", "etcd"} {
		n.stopProc(name, 15*time.Second)
	}
	// Processes outside our children: containerd's shims (their command
	// line names our socket) and the containers (in our cgroups), by PID.
	add(n.killStragglers(15 * time.Second))
	if n.proc("kube-proxy") != nil || n.stale {
		if out, err := command(60*time.Second, filepath.Join(n.tools, "kube-proxy"), "--cleanup"); err != nil {
			add(fmt.Errorf("kube-proxy --cleanup: %v\n%s", err, out))
		}
	}
	// Mounts: containers' root filesystems, sandboxes' /dev/shm, volumes,
	// CRI's network namespaces.
	roots := []string{n.Dir}
	for _, p := range []string{"/run/containerd", "/var/lib/kubelet"} {
		if !n.host.Existed[p] {
			roots = append(roots, p)
		}
	}
	for _, ns := range n.newNetns() {
		roots = append(roots, filepath.Join("/run/netns", ns))
	}
	for _, err := range unmountAll(roots) {
		add(err)
	}
	for _, ns := range n.newNetns() {
		if err := os.Remove(filepath.Join("/run/netns", ns)); err != nil {
			add(err)
		}
	}
	// Our bridge (its routes go with it); the pods' veths went with their
	// network namespaces.
	if exists("/sys/class/net/" + n.Bridge) {
		if _, err := command(10*time.Second, "ip", "link", "delete", n.Bridge); err != nil {
			add(err)
		}
	}
	// cgroups: our root in every hierarchy, and kubepods if the kubelet
	// made one outside it.
	cgDeadline := time.Now().Add(15 * time.Second)
	for _, m := range cgroupMounts() {
		if n.cgroupSet {
			add(removeCgroupTree(filepath.Join(m, n.Name), cgDeadline))
		}
		if kp := filepath.Join(m, "kubepods"); !n.host.Existed[kp] && exists(kp) {
			add(removeCgroupTree(kp, cgDeadline))
		}
	}
	for _, err := range n.host.removeChains() {
		add(err)
	}
	for _, t := range nftTables() {
		// kube-proxy's own tables, and the tables iptables-nft made for the
		// first chain in a family when the machine had none and that are
		// empty again now.
		if !n.host.Nft[t] && (strings.Contains(t, "kube") || strings.Contains(t, "cni") || emptyIptablesTable(t)) {
			f := strings.Fields(t)
			if _, err := command(10*time.Second, "nft", append([]string{"delete", "table"}, f...)...); err != nil {
				add(err)
			}
		}
	}
	for s, v := range n.host.Sysctls {
		if cur, err := os.ReadFile(sysctlPath(s)); err == nil && strings.TrimSpace(string(cur)) != v {
			add(os.WriteFile(sysctlPath(s), []byte(v), 0o644))
		}
	}
	// Folders: ours, and the fixed ones if they were not there before (only
	// CNI's cache of our network when /var/lib/cni was).
	for _, p := range fixedPaths {
		if !n.host.Existed[p] {
			add(os.RemoveAll(p))
		}
	}
	if n.host.Existed["/var/lib/cni"] {
		for _, f := range listDir("/var/lib/cni/results") {
			if strings.HasPrefix(f, n.Name+"-") {
				add(os.Remove(filepath.Join("/var/lib/cni/results", f)))
			}
		}
	}
	if n.Dir != "" {
		add(os.RemoveAll(n.Dir))
	}
	return errors.Join(errs...)
}

func (n *Node) newNetns() []string {
	var ns []string
	for _, e := range listDir("/run/netns") {
		if !n.host.Netns[e] && strings.HasPrefix(e, "cni-") {
			ns = append(ns, e)
		}
	}
	return ns
}

// stragglers are the processes of this node that are not its direct
// children: shims (named by our folder) and containers (in our cgroups).
func (n *Node) stragglers() map[int]string {
	if n.Dir == "" {
		return nil
	}
	return processes([]string{n.Dir}, "/"+n.Name+"/")
}

func (n *Node) killStragglers(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ps := n.stragglers()
		if len(ps) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes still running after SIGKILL: %v", ps)
		}
		for pid := range ps {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Leftovers lists what the node left on the machine after Stop: processes,
// mounts, cgroups, network namespaces, links, iptables chains and rules,
// nftables tables, changed sysctls, folders. Empty when the teardown was
// complete.
func (n *Node) Leftovers() []string {
	var left []string
	for _, p := range n.procs {
		if !p.exited() {
			left = append(left, fmt.Sprintf("process %s (pid %d)", p.name, p.cmd.Process.Pid))
		}
	}
	for pid, cl := range n.stragglers() {
		left = append(left, fmt.Sprintf("process %d: %.120s", pid, cl))
	}
	roots := []string{n.Dir, "/run/containerd", "/var/lib/kubelet", "/run/netns"}
	for _, m := range mountsUnder(roots) {
		if m != "/run/netns" || !n.host.Existed["/run/netns"] {
			left = append(left, "mount "+m)
		}
	}
	for _, m := range cgroupMounts() {
		if exists(filepath.Join(m, n.Name)) {
			left = append(left, "cgroup "+filepath.Join(m, n.Name))
		}
		if kp := filepath.Join(m, "kubepods"); !n.host.Existed[kp] && exists(kp) {
			left = append(left, "cgroup "+kp)
		}
	}
	for _, ns := range listDir("/run/netns") {
		if !n.host.Netns[ns] {
			left = append(left, "netns "+ns)
		}
	}
	for _, l := range links() {
		if !n.host.Links[l] {
			left = append(left, "link "+l)
		}
	}
	for _, bin := range []string{"iptables", "ip6tables"} {
		for _, table := range iptablesTables {
			chains, rules := iptablesList(bin, table)
			for _, c := range chains {
				if !n.host.Chains[bin+" "+table+" "+c] {
					left = append(left, fmt.Sprintf("%s -t %s chain %s", bin, table, c))
				}
			}
			for _, r := range rules {
				if (isOurs(r) || (n.PodCIDR != "" && strings.Contains(r, strings.TrimSuffix(n.PodCIDR, "0/24")))) && !n.host.Rules[bin+" "+table+" "+r] {
					left = append(left, fmt.Sprintf("%s -t %s rule %s", bin, table, r))
				}
			}
		}
	}
	for _, t := range nftTables() {
		if !n.host.Nft[t] {
			left = append(left, "nft table "+t)
		}
	}
	for s, v := range n.host.Sysctls {
		if cur, err := os.ReadFile(sysctlPath(s)); err == nil && strings.TrimSpace(string(cur)) != v {
			left = append(left, fmt.Sprintf("sysctl %s = %s (was %s)", s, bytes.TrimSpace(cur), v))
		}
	}
	for _, p := range append([]string{n.Dir}, fixedPaths...) {
		if (p == n.Dir || !n.host.Existed[p]) && exists(p) {
			left = append(left, "path "+p)
		}
	}
	return left
}

// sweepStale finishes the teardown of the nodes whose test binary died
// before their cleanup could run (go test's -timeout, a kill): holding the
// machine's lock, any other node's folder is stale. With the snapshot the
// dead node saved (host.json) the whole teardown runs as Stop: its
// processes by PID, mounts, network namespaces, bridge, cgroups, chains,
// sysctls and paths. A folder without host.json (a death in the first
// milliseconds) only loses its processes, mounts, bridge, cgroups and folder.
func (n *Node) sweepStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "kubenode-kn*"))
	for _, dir := range dirs {
		name := strings.TrimPrefix(filepath.Base(dir), "kubenode-")
		n.t.Logf("kubenode: finishing the teardown of node %s (its test binary died before its cleanup)", name)
		old := &Node{t: n.t, tools: n.tools, Name: name, Dir: dir, Bridge: name + "-br", stale: true, cgroupSet: true}
		if b, err := os.ReadFile(filepath.Join(dir, "host.json")); err == nil && json.Unmarshal(b, &old.host) == nil && old.host != nil {
			if err := old.Stop(); err != nil {
				n.t.Logf("kubenode: teardown of %s: %v", name, err)
			}
			continue
		}
		old.killStragglers(10 * time.Second)
		unmountAll([]string{dir})
		command(10*time.Second, "ip", "link", "delete", old.Bridge)
		for _, m := range cgroupMounts() {
			removeCgroupTree(filepath.Join(m, name), time.Now().Add(5*time.Second))
		}
		os.RemoveAll(dir)
	}
}

// ContainerPID is the host PID of a running container's first process,
// from its ID as the pod's status gives it ("containerd://<id>"): what a
// test signals to inject a fault the kubelet must notice (a crash, a
// stopped process).
func (n *Node) ContainerPID(containerID string) (int, error) {
	id := strings.TrimPrefix(containerID, "containerd://")
	out, err := n.ctr(30*time.Second, "tasks", "ls")
	if err != nil {
		return 0, fmt.Errorf("kubenode: ctr tasks ls: %v: %s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == id {
			pid, err := strconv.Atoi(f[1])
			if err != nil || pid <= 1 {
				return 0, fmt.Errorf("kubenode: task %s has PID %q", id, f[1])
			}
			return pid, nil
		}
	}
	return 0, fmt.Errorf("kubenode: no running task for container %s", id)
}

// API is the API server's URL and an HTTP client that authenticates as the
// admin (system:masters) with a client certificate.
func (n *Node) API() (url string, client *http.Client) { return n.apiURL, n.client }
