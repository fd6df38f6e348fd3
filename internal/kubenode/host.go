package kubenode

// What a node changes on the machine outside its own folder, captured before
// it starts (snapshotHost) so that teardown removes exactly what the node
// added, and Leftovers can prove it: iptables chains, network namespaces,
// links, nftables tables, sysctls, cgroups and a few fixed paths that the
// kubelet, containerd and the CNI plugins use whatever they are told.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"
)

// sysctls are the kernel settings the components may change: the CNI bridge
// (ip_forward), kube-proxy (route_localnet, conntrack) and the kubelet
// (its "kernel defaults" when protectKernelDefaults is false).
var sysctls = []string{
	"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding", "net.ipv4.conf.all.forwarding",
	"net.ipv4.conf.all.route_localnet", "net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables",
	"vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
	"kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes",
	"net.netfilter.nf_conntrack_max", "net.netfilter.nf_conntrack_tcp_timeout_established",
	"net.netfilter.nf_conntrack_tcp_timeout_close_wait", "net.netfilter.nf_conntrack_tcp_be_liberal",
}

// fixedPaths are created by the components outside the folders they are
// given: containerd's shim sockets (/run/containerd/s), the kubelet's
// device-plugins folder, CNI's result cache, the kubelet's container log
// links, and CRI's network namespaces.
var fixedPaths = []string{"/run/containerd", "/var/lib/kubelet", "/var/lib/cni", "/var/log/containers", "/var/log/pods", "/run/netns"}

var iptablesTables = []string{"filter", "nat", "mangle", "raw"}

// hostState is saved as host.json in the node's folder, so that a later
// node can finish the teardown of one whose test binary died (sweepStale).
type hostState struct {
	Chains  map[string]bool   // "iptables nat KUBE-SERVICES"
	Rules   map[string]bool   // "iptables nat -A POSTROUTING ..." of KUBE-/CNI- rules
	Netns   map[string]bool   // entries of /run/netns
	Links   map[string]bool   // network interfaces
	Nft     map[string]bool   // nftables tables ("ip nat")
	Sysctls map[string]string // values of sysctls
	Existed map[string]bool   // fixedPaths and cgroup folders that existed before
}

func snapshotHost() *hostState {
	h := &hostState{Chains: map[string]bool{}, Rules: map[string]bool{}, Netns: map[string]bool{},
		Links: map[string]bool{}, Nft: map[string]bool{}, Sysctls: map[string]string{}, Existed: map[string]bool{}}
	for _, bin := range []string{"iptables", "ip6tables"} {
		for _, table := range iptablesTables {
			chains, rules := iptablesList(bin, table)
			for _, c := range chains {
				h.Chains[bin+" "+table+" "+c] = true
			}
			for _, r := range rules {
				if isOurs(r) {
					h.Rules[bin+" "+table+" "+r] = true
				}
			}
		}
	}
	for _, n := range listDir("/run/netns") {
		h.Netns[n] = true
	}
	for _, l := range links() {
		h.Links[l] = true
	}
	for _, t := range nftTables() {
		h.Nft[t] = true
	}
	for _, s := range sysctls {
		if v, err := os.ReadFile(sysctlPath(s)); err == nil {
			h.Sysctls[s] = strings.TrimSpace(string(v))
		}
	}
	for _, p := range fixedPaths {
		h.Existed[p] = exists(p)
	}
	for _, d := range cgroupMounts() {
		h.Existed[filepath.Join(d, "kubepods")] = exists(filepath.Join(d, "kubepods"))
	}
	return h
}

func isOurs(rule string) bool {
	return strings.Contains(rule, "KUBE-") || strings.Contains(rule, "CNI-")
}

func sysctlPath(name string) string {
	return filepath.Join("/proc/sys", strings.ReplaceAll(name, ".", "/"))
}

func exists(p string) bool { _, err := os.Lstat(p); return err == nil }

func listDir(dir string) []string {
	es, _ := os.ReadDir(dir)
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// command runs a short host command with a deadline.
func command(timeout time.Duration, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// iptablesList returns a table's chains and its rules as `iptables -S`
// prints them.
func iptablesList(bin, table string) (chains, rules []string) {
	out, err := command(20*time.Second, bin, "-w", "5", "-t", table, "-S")
	if err != nil {
		return nil, nil
	}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 2 && (f[0] == "-N" || f[0] == "-P"):
			chains = append(chains, f[1])
		case len(f) >= 2 && f[0] == "-A":
			rules = append(rules, l)
		}
	}
	return chains, rules
}

// splitRule splits a line of `iptables -S` into arguments, honouring its
// double quotes (comments) and their backslash escapes.
func splitRule(l string) []string {
	var args []string
	var cur strings.Builder
	inQuote, have := false, false
	for i := 0; i < len(l); i++ {
		c := l[i]
		switch {
		case c == '\\' && inQuote && i+1 < len(l):
			i++
			cur.WriteByte(l[i])
		case c == '"':
			inQuote, have = !inQuote, true
		case c == ' ' && !inQuote:
			if have || cur.Len() > 0 {
				args = append(args, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(c)
		}
	}
	if have || cur.Len() > 0 {
		args = append(args, cur.String())
	}
	return args
}

// removeChains deletes the KUBE-* and CNI-* chains that were not there
// before, with the rules of other chains that jump to them, in both
// families and every table.
func (h *hostState) removeChains() []error {
	var errs []error
	for _, bin := range []string{"iptables", "ip6tables"} {
		for _, table := range iptablesTables {
			chains, rules := iptablesList(bin, table)
			var ours []string
			for _, c := range chains {
				if (strings.HasPrefix(c, "KUBE-") || strings.HasPrefix(c, "CNI-")) && !h.Chains[bin+" "+table+" "+c] {
					ours = append(ours, c)
				}
			}
			// Rules of the chains that stay which jump to a chain of ours,
			// or mention one (new rules only: the machine's own are kept).
			for _, r := range rules {
				args := splitRule(r)
				if len(args) < 2 || slices.Contains(ours, args[1]) || h.Rules[bin+" "+table+" "+r] || !isOurs(r) {
					continue
				}
				args[0] = "-D"
				if _, err := command(20*time.Second, bin, append([]string{"-w", "5", "-t", table}, args...)...); err != nil {
					errs = append(errs, err)
				}
			}
			for _, c := range ours {
				if _, err := command(20*time.Second, bin, "-w", "5", "-t", table, "-F", c); err != nil {
					errs = append(errs, err)
				}
			}
			for _, c := range ours {
				if _, err := command(20*time.Second, bin, "-w", "5", "-t", table, "-X", c); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errs
}

func links() []string {
	out, err := command(10*time.Second, "ip", "-o", "link", "show")
	if err != nil {
		return nil
	}
	var names []string
	for _, l := range strings.Split(string(out), "\n") {
		// "3: name@peer: <...>"
		f := strings.Fields(l)
		if len(f) >= 2 {
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			names = append(names, name)
		}
	}
	return names
}

func nftTables() []string {
	if _, err := exec.LookPath("nft"); err != nil {
		return nil
	}
	out, err := command(10*time.Second, "nft", "list", "tables")
	if err != nil {
		return nil
	}
	var ts []string
	for _, l := range strings.Split(string(out), "\n") {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "table ") {
			ts = append(ts, strings.TrimPrefix(l, "table "))
		}
	}
	return ts
}

// cgroupMounts returns the mount points of the cgroup hierarchies: every
// /sys/fs/cgroup/<controller> on cgroup v1, /sys/fs/cgroup on v2.
func cgroupMounts() []string {
	var dirs []string
	for _, m := range mountInfo() {
		if m.fstype == "cgroup" || m.fstype == "cgroup2" {
			dirs = append(dirs, m.point)
		}
	}
	return dirs
}

type mount struct{ point, fstype string }

func mountInfo() []mount {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var ms []mount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		i := slices.Index(f, "-")
		if len(f) < 5 || i < 0 || i+1 >= len(f) {
			continue
		}
		ms = append(ms, mount{point: unescapeMount(f[4]), fstype: f[i+1]})
	}
	return ms
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// mountsUnder returns the mount points at or under any of roots, deepest
// first.
func mountsUnder(roots []string) []string {
	var ps []string
	for _, m := range mountInfo() {
		for _, r := range roots {
			if m.point == r || strings.HasPrefix(m.point, r+"/") {
				ps = append(ps, m.point)
				break
			}
		}
	}
	sort.Slice(ps, func(i, j int) bool { return len(ps[i]) > len(ps[j]) })
	return slices.Compact(ps)
}

// unmountAll detaches every mount under roots (lazily: a busy mount goes
// when its last user does), a few passes for stacked mounts.
func unmountAll(roots []string) []error {
	var errs []error
	for range 5 {
		ps := mountsUnder(roots)
		if len(ps) == 0 {
			return nil
		}
		errs = errs[:0]
		for _, p := range ps {
			if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && err != syscall.EINVAL && err != syscall.ENOENT {
				errs = append(errs, fmt.Errorf("umount %s: %v", p, err))
			}
		}
	}
	if ps := mountsUnder(roots); len(ps) > 0 {
		errs = append(errs, fmt.Errorf("still mounted: %v", ps))
	}
	return errs
}

// removeCgroupTree removes a cgroup folder and its children, deepest first,
// retrying while the kernel finishes freeing killed tasks.
func removeCgroupTree(root string, deadline time.Time) error {
	for {
		var dirs []string
		filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		if len(dirs) == 0 {
			return nil
		}
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		var last error
		for _, d := range dirs {
			if err := syscall.Rmdir(d); err != nil && err != syscall.ENOENT {
				last = fmt.Errorf("rmdir %s: %v", d, err)
			}
		}
		if last == nil && !exists(root) {
			return nil
		}
		if time.Now().After(deadline) {
			return last
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// processes returns the PIDs (other than this one) whose command line
// mentions any of marks or whose cgroup path contains cgroupMark.
func processes(marks []string, cgroupMark string) map[int]string {
	found := map[int]string{}
	self := os.Getpid()
	for _, e := range listDir("/proc") {
		var pid int
		if _, err := fmt.Sscanf(e, "%d", &pid); err != nil || pid == self {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e, "cmdline"))
		if err != nil || len(cmdline) == 0 { // gone, or a kernel thread or zombie
			continue
		}
		cl := strings.TrimSpace(string(bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})))
		hit := false
		for _, m := range marks {
			if strings.Contains(cl, m) {
				hit = true
			}
		}
		if cg, err := os.ReadFile(filepath.Join("/proc", e, "cgroup")); err == nil && strings.Contains(string(cg), cgroupMark) {
			hit = true
		}
		if hit {
			found[pid] = cl
		}
	}
	return found
}

// emptyIptablesTable reports whether an nftables table ("ip nat") is one
// of iptables-nft's (filter, nat, mangle, raw of ip or ip6) holding nothing
// but the built-in chains with an ACCEPT policy.
func emptyIptablesTable(t string) bool {
	f := strings.Fields(t)
	if len(f) != 2 || !slices.Contains(iptablesTables, f[1]) || (f[0] != "ip" && f[0] != "ip6") {
		return false
	}
	bin := map[string]string{"ip": "iptables", "ip6": "ip6tables"}[f[0]]
	out, err := command(20*time.Second, bin, "-w", "5", "-t", f[1], "-S")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if !strings.HasPrefix(l, "-P ") || !strings.HasSuffix(l, " ACCEPT") {
			return false
		}
	}
	return true
}
