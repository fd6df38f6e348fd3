package inferencepb

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// TestDescriptorMatchesUpstream holds the compiled descriptor to the table
// of upstream's names and numbers (../testdata/upstream_fields.txt), both
// ways, so that a typo in a field number, a name, a type or a label, or a
// field upstream has not, fails.
func TestDescriptorMatchesUpstream(t *testing.T) {
	f, err := os.Open("../testdata/upstream_fields.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.Join(strings.Fields(sc.Text()), " ")
		if line != "" && !strings.HasPrefix(line, "#") {
			want[line] = true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	got := describe(File_grpc_service_proto)
	for _, l := range got {
		if !want[l] {
			t.Errorf("the descriptor has %q, which the upstream table has not", l)
		}
	}
	for l := range want {
		if !slices.Contains(got, l) {
			t.Errorf("the upstream table has %q, which the descriptor has not", l)
		}
	}
}

// describe lists fd in the table's form.
func describe(fd protoreflect.FileDescriptor) []string {
	pkg := string(fd.Package())
	out := []string{"package " + pkg}
	rel := func(n protoreflect.FullName) string { return strings.TrimPrefix(string(n), pkg+".") }
	svcs := fd.Services()
	for i := range svcs.Len() {
		s := svcs.Get(i)
		for j := range s.Methods().Len() {
			m := s.Methods().Get(j)
			stream := ""
			if m.IsStreamingClient() || m.IsStreamingServer() {
				stream = " streaming"
			}
			out = append(out, fmt.Sprintf("rpc %s %s %s%s", rel(m.FullName()), rel(m.Input().FullName()), rel(m.Output().FullName()), stream))
		}
	}
	var walk func(protoreflect.MessageDescriptors)
	walk = func(ms protoreflect.MessageDescriptors) {
		for i := range ms.Len() {
			m := ms.Get(i)
			if m.IsMapEntry() {
				continue
			}
			if m.Fields().Len() == 0 {
				out = append(out, "message "+rel(m.FullName()))
			}
			for j := range m.Fields().Len() {
				fl := m.Fields().Get(j)
				typ := fl.Kind().String()
				if fl.Message() != nil {
					typ = rel(fl.Message().FullName())
				}
				label := fl.Cardinality().String()
				if fl.IsMap() {
					v := fl.MapValue().Kind().String()
					if fl.MapValue().Message() != nil {
						v = rel(fl.MapValue().Message().FullName())
					}
					label, typ = fmt.Sprintf("map<%s,%s>", fl.MapKey().Kind(), v), ""
				}
				line := strings.TrimSpace(fmt.Sprintf("field %s %d %s %s", rel(fl.FullName()), fl.Number(), label, typ))
				out = append(out, line)
				if o := fl.ContainingOneof(); o != nil && !o.IsSynthetic() {
					out = append(out, fmt.Sprintf("oneof %s %s", rel(fl.FullName()), o.Name()))
				}
			}
			walk(m.Messages())
		}
	}
	walk(fd.Messages())
	return out
}

// TestGeneratedIsCurrent regenerates the Go code into a temporary folder
// (gen.sh) and compares it with the checked-in files. Without protoc it is
// skipped, except in CI (CI=true), where it fails.
func TestGeneratedIsCurrent(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the protoc plugins; skipped in -short")
	}
	if _, err := exec.LookPath("protoc"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("protoc not found: install Debian's protobuf-compiler (scripts/install-tools.sh)")
		}
		t.Skip("protoc not found (Debian's protobuf-compiler; scripts/install-tools.sh installs it): cannot check the generated code")
	}
	dir := t.TempDir()
	cmd := exec.Command("sh", "gen.sh", dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gen.sh: %v\n%s", err, out)
	}
	for _, name := range []string{"grpc_service.pb.go", "grpc_service_grpc.pb.go"} {
		fresh, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		have, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(fresh, have) {
			t.Errorf("%s is not what grpc_service.proto generates: run go generate ./proxy/oipgrpc/inferencepb", name)
		}
	}
}
