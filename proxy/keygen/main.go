// Command keygen makes an API key for the proxy (docs/auth.md): it prints
// the key, to give the client once, and the entry to add to the keys file,
// which holds only the sha256 of the key's secret.
//
//	go run ./proxy/keygen -id team-a [-scopes predict,metadata,versions] [-rate 20 -burst 40] [-max-concurrent-images 32]
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/batchgate/batchgate/proxy/auth"
)

func main() {
	id := flag.String("id", "", "the key's id: 1-64 letters, digits, '_' or '-' (required)")
	scopes := flag.String("scopes", "predict,metadata", "comma-separated scopes: predict, metadata, versions (choosing a model version; needs predict)")
	rate := flag.Float64("rate", 0, "images per second for this key; 0: unlimited")
	burst := flag.Int("burst", 0, "images at once, and the most in one request; default max(1, ceil(rate))")
	concurrent := flag.Int("max-concurrent-images", 0, "images this key may have in flight at once; 0: unlimited")
	flag.Parse()
	if err := run(*id, *scopes, *rate, *burst, *concurrent); err != nil {
		fmt.Fprintln(os.Stderr, "keygen:", err)
		os.Exit(2)
	}
}

func run(id, scopeList string, rate float64, burst, concurrent int) error {
	if id == "" {
		return fmt.Errorf("-id is required, such as -id team-a")
	}
	scopes, err := auth.ParseScopes(scopeList)
	if err != nil {
		return fmt.Errorf("-scopes: %w", err)
	}
	key, sum, err := auth.GenerateKey(id)
	if err != nil {
		return err
	}
	entry := auth.Key{ID: id, SHA256: sum, Scopes: scopes, Rate: rate, Burst: burst, MaxConcurrentImages: concurrent}.Entry()
	if _, err := auth.Parse([]byte("keys:\n" + entry)); err != nil { // -rate, -burst, -max-concurrent-images, versions without predict
		return err
	}
	fmt.Printf("# The key for %s: give it to the client now; it is shown once and stored nowhere.\n%s\n\n", id, key)
	fmt.Printf("# Add this entry under `keys:` in the keys file (AUTH_KEYS_FILE):\n%s", entry)
	return nil
}
