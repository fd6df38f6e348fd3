package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
)

// GenerateKey makes a key for id: "<id>.<secret>", the secret 32 bytes
// from crypto/rand in base64url, and the hex sha256 of the secret, which
// is what the keys file holds. Give the key to the client once; it is
// stored nowhere.
func GenerateKey(id string) (key, sha256Hex string, err error) {
	if !idPattern.MatchString(id) {
		return "", "", fmt.Errorf("key id %.70q: want 1-64 letters, digits, '_' or '-'", id)
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", fmt.Errorf("reading random bytes: %w", err)
	}
	secret := base64.RawURLEncoding.EncodeToString(b[:])
	sum := sha256.Sum256([]byte(secret))
	return id + "." + secret, hex.EncodeToString(sum[:]), nil
}
