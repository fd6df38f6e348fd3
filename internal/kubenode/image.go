package kubenode

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"time"
)

// File is one file of an image layer written by WriteImage.
type File struct {
	Name string // path inside the image, without a leading slash
	Mode int64  // permission bits
	Data []byte
}

// WriteImage writes a one-layer image holding files, tagged tag, as a
// docker-archive tarball (manifest.json, the config and layer.tar), the
// format `ctr images import` and `podman load` read. entrypoint is the
// image's ENTRYPOINT and user its USER ("" for root). No registry and no
// image builder is involved: kubenode makes its pause image this way.
func WriteImage(path, tag string, entrypoint []string, user string, files []File) error {
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	epoch := time.Unix(0, 0)
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Name: f.Name, Mode: f.Mode, Size: int64(len(f.Data)),
			Typeflag: tar.TypeReg, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return err
		}
		if _, err := tw.Write(f.Data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	layerSum := sha256.Sum256(layer.Bytes())
	layerHex := hex.EncodeToString(layerSum[:])
	config, err := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"created":      epoch.UTC().Format(time.RFC3339),
		"config":       map[string]any{"Entrypoint": entrypoint, "User": user},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + layerHex}},
	})
	if err != nil {
		return err
	}
	configSum := sha256.Sum256(config)
	configName := hex.EncodeToString(configSum[:]) + ".json"
	layerName := layerHex + "/layer.tar"
	manifest, err := json.Marshal([]map[string]any{{"Config": configName, "RepoTags": []string{tag}, "Layers": []string{layerName}}})
	if err != nil {
		return err
	}

	out, err := os.Create(path)
	if err != nil {
		return err
	}
	aw := tar.NewWriter(out)
	for _, e := range []struct {
		name string
		data []byte
	}{{configName, config}, {layerName, layer.Bytes()}, {"manifest.json", manifest}} {
		if err := aw.WriteHeader(&tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.data)),
			Typeflag: tar.TypeReg, ModTime: epoch}); err != nil {
			out.Close()
			return err
		}
		if _, err := aw.Write(e.data); err != nil {
			out.Close()
			return err
		}
	}
	if err := aw.Close(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
