package imageprep

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDamagedLikePIL: a damaged JPEG is refused exactly when PIL (Debian's
// python3-pil, on the same libjpeg-turbo; `make test` installs it) refuses
// it, on the exact path and on the DCT-scaled one (PIL with draft()). PIL
// ignores libjpeg's warnings but not its errors, and refuses a file that
// ends before its end-of-image marker. Before this test, an error that
// followed a warning, or a cut that followed one, gave a partly gray image.
//
// On top of the named kinds of damage, 300 random ones (flipped, replaced,
// inserted and deleted bytes, cuts). There one difference is allowed, in
// the safe direction: PIL stops reading once it has every row, so it takes
// a file whose end-of-image marker is missing or damaged if the scan data
// before it is whole, and we refuse it as cut short (8 of 4000 verdicts in
// a 2000-file trial).
func TestDamagedLikePIL(t *testing.T) {
	if JPEGDecoder() != "libjpeg-turbo" {
		t.Skip("PIL's verdicts are libjpeg-turbo's; this build has Go's decoder")
	}
	dir := t.TempDir()
	var names []string
	for _, file := range []string{"grace_hopper.jpg", "small_progressive.jpg", "small_gray.jpg", "small_cmyk.jpg"} {
		for name, data := range damaged(t, read(t, file)) {
			name = strings.TrimSuffix(file, ".jpg") + "." + name + ".jpg"
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
				t.Fatal(err)
			}
			names = append(names, name)
		}
	}
	r := rand.New(rand.NewSource(1))
	for i := range 300 {
		file := []string{"small_progressive.jpg", "small_gray.jpg", "small_cmyk.jpg"}[i%3]
		name := fmt.Sprintf("random-%03d.jpg", i)
		if err := os.WriteFile(filepath.Join(dir, name), randomDamage(r, read(t, file)), 0o644); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	if !strings.Contains(strings.Join(names, " "), "warning-then-error") {
		t.Fatal("no progressive file to put an error after a warning in")
	}
	pil := pilAccepts(t, dir, names)
	refused, allowed := 0, 0
	out32 := make([]float32, 3*224*224)
	for _, name := range names {
		data, _ := os.ReadFile(filepath.Join(dir, name))
		want := pil(name)
		h, err := Inspect(data, Limits{})
		for i, denom := range []int{1, ScaleDenom(h, imagenet)} {
			var terr error = err
			if err == nil {
				terr = TensorAt(data, h, imagenet, denom, out32)
			}
			switch got := terr == nil; {
			case got == want[i]:
			case strings.HasPrefix(name, "random-") && want[i] && strings.Contains(terr.Error(), "Premature end of JPEG file"):
				allowed++
			default:
				t.Errorf("%s at 1/%d: accepted %v (%v), PIL %v", name, denom, got, terr, want[i])
			}
			if terr != nil {
				refused++
			}
		}
	}
	t.Logf("%d files, %d decodes refused; %d refusals of a file PIL takes without its end marker", len(names), refused, allowed)
	if refused == 0 || refused == 2*len(names) {
		t.Errorf("%d of %d decodes refused: the set should have both", refused, 2*len(names))
	}
}

// randomDamage changes data in one to three places.
func randomDamage(r *rand.Rand, data []byte) []byte {
	data = append([]byte(nil), data...)
	for j := r.Intn(3) + 1; j > 0 && len(data) > 0; j-- {
		p := r.Intn(len(data))
		switch r.Intn(5) {
		case 0:
			data[p] ^= byte(1 << r.Intn(8))
		case 1:
			data[p] = byte(r.Intn(256))
		case 2:
			data = append(data[:p], append([]byte{byte(r.Intn(256)), byte(r.Intn(256))}, data[p:]...)...)
		case 3:
			data = data[:p+1]
		case 4:
			data = append(data[:p], data[min(p+3, len(data)):]...)
		}
	}
	return data
}

// damaged returns ways to damage a JPEG: cut short, extra bytes (which
// libjpeg warns about), an error after a warning, a missing table.
func damaged(t *testing.T, data []byte) map[string][]byte {
	at := func(marker byte, from int) int {
		i := bytes.Index(data[from:], []byte{0xff, marker})
		if i < 0 {
			return -1
		}
		return from + i
	}
	insert := func(d []byte, i int, b ...byte) []byte {
		return append(append(append([]byte(nil), d[:i]...), b...), d[i:]...)
	}
	sos := at(0xda, 0)
	lastSOS := bytes.LastIndex(data, []byte{0xff, 0xda})
	dht := at(0xc4, 0)
	if sos < 0 || dht < 0 {
		t.Fatal("no SOS or DHT")
	}
	n := len(data)
	v := map[string][]byte{
		"whole":                data,
		"cut-in-header":        data[:dht+10],
		"cut-before-scan":      data[:sos],
		"cut-in-scan":          data[:sos+20],
		"cut-half":             data[:n/2],
		"no-eoi":               data[:n-2],
		"half-eoi":             data[:n-1],
		"trailing-junk":        append(append([]byte(nil), data...), []byte("junkjunkjunk")...),
		"junk-before-dht":      insert(data, dht, 1, 2, 3),
		"junk-before-eoi":      insert(data, n-2, 0, 1, 2, 3),
		"junk-in-header-cut":   insert(data, dht, 1, 2, 3)[:n*3/4],
		"junk-before-scan":     insert(data, lastSOS, 1, 2, 3),
		"junk-before-scan-cut": insert(data, lastSOS, 1, 2, 3)[:n*3/4],
	}
	flipped := append([]byte(nil), data...)
	for i := sos + 20; i < n-2 && i < sos+60; i += 4 {
		if flipped[i] != 0xff && flipped[i]^0x55 != 0xff && flipped[i-1] != 0xff {
			flipped[i] ^= 0x55
		}
	}
	v["flipped-scan"] = flipped
	if later := at(0xc4, lastSOS-200); later > sos && later < lastSOS {
		bogus := insert(data, lastSOS, 1, 2, 3)
		bogus[later+4] = 0x7f // a DHT index libjpeg refuses, after the extra bytes' warning
		v["warning-then-error"] = bogus
	}
	v["no-dqt"] = withoutDQT(data)
	return v
}

// withoutDQT is a JPEG without its quantization tables (the DQT segments
// before its first scan).
func withoutDQT(data []byte) []byte {
	sos := bytes.Index(data, []byte{0xff, 0xda})
	out := append([]byte(nil), data[:2]...)
	for i := 2; i < sos; {
		n := 2 + (int(data[i+2])<<8 | int(data[i+3]))
		if data[i+1] != 0xdb {
			out = append(out, data[i:i+n]...)
		}
		i += n
	}
	return append(out, data[sos:]...)
}

// TestDamagedWebPLikePIL: a lossy WebP whose frame data is damaged (bytes
// flipped or replaced inside the "VP8 " chunk, so the file's structure
// holds) is refused exactly when PIL refuses it, as both decode the frame
// with libwebp 1.2.4: 150 damaged copies each of a plain and an alpha
// lossy file.
func TestDamagedWebPLikePIL(t *testing.T) {
	if WebPDecoder() != "libwebp" {
		t.Skip("PIL's verdicts are libwebp's; this build decodes WebP with x/image/webp")
	}
	dir := t.TempDir()
	r := rand.New(rand.NewSource(2))
	var names []string
	for _, file := range []string{"lossy.webp", "lossy_alpha.webp"} {
		data := readLocal(t, file)
		h, err := Inspect(data, Limits{})
		if err != nil || h.vp8Len == 0 {
			t.Fatalf("%s: not a lossy WebP (%v)", file, err)
		}
		for i := range 150 {
			d := append([]byte(nil), data...)
			for j := r.Intn(3) + 1; j > 0; j-- {
				p := h.vp8Off + r.Intn(h.vp8Len)
				if r.Intn(2) == 0 {
					d[p] ^= byte(1 << r.Intn(8))
				} else {
					d[p] = byte(r.Intn(256))
				}
			}
			name := fmt.Sprintf("%s-%03d.webp", strings.TrimSuffix(file, ".webp"), i)
			if err := os.WriteFile(filepath.Join(dir, name), d, 0o644); err != nil {
				t.Fatal(err)
			}
			names = append(names, name)
		}
	}
	pil := pilAccepts(t, dir, names)
	refused := 0
	out32 := make([]float32, 3*224*224)
	for _, name := range names {
		data, _ := os.ReadFile(filepath.Join(dir, name))
		want := pil(name)[0] // without draft(), which WebP does not have
		h, err := Inspect(data, Limits{})
		if err == nil {
			err = Tensor(data, h, imagenet, out32)
		}
		if got := err == nil; got != want {
			t.Errorf("%s: accepted %v (%v), PIL %v", name, got, err, want)
		}
		if err != nil {
			refused++
		}
	}
	t.Logf("%d damaged lossy WebPs, %d refused", len(names), refused)
	if refused == 0 || refused == len(names) {
		t.Errorf("%d of %d refused: the set should have both", refused, len(names))
	}
}

// pilAccepts asks PIL (scripts/pil_reference.py accepts) whether it decodes
// each of names in dir, without and with draft(), and returns the lookup of
// those verdicts (which fails the test for a name PIL gave none for).
func pilAccepts(t *testing.T, dir string, names []string) func(name string) [2]bool {
	t.Helper()
	args := []string{"../../scripts/pil_reference.py", "accepts"}
	for _, n := range names {
		args = append(args, filepath.Join(dir, n))
	}
	out, err := exec.Command("/usr/bin/python3", args...).Output()
	if err != nil {
		t.Fatalf("PIL (needs Debian's python3-pil; `make test` installs it): %v", err)
	}
	pil := map[string][2]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var name, exact, draft string
		if _, err := fmt.Sscan(line, new(string), &name, &exact, &draft); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		pil[name] = [2]bool{exact == "ok", draft == "ok"}
	}
	return func(name string) [2]bool {
		v, ok := pil[name]
		if !ok {
			t.Fatalf("no verdict from PIL for %s", name)
		}
		return v
	}
}
