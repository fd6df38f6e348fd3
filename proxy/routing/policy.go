package routing

import (
	"crypto/sha256"
	"encoding/binary"
)

// Serving reports whether a model may take traffic: its ready versions hold
// at least half of its weight (readyWeight of totalWeight, rolled-back
// versions counting 0). A canary therefore never carries a starting or
// failed primary's share, and a failed canary never blocks the model.
func Serving(readyWeight, totalWeight float64) bool {
	return totalWeight > 0 && 2*readyWeight >= totalWeight
}

// Pick returns the index of the version that point u in [0, 1) falls on,
// with the weights laid end to end over [0, 1) in order; -1 when every
// weight is 0. Equal inputs give equal answers: with u from StickyPoint, a
// key keeps its version while the weights (and their order) are unchanged.
func Pick(weights []float64, u float64) int {
	var total float64
	last := -1
	for i, w := range weights {
		if w > 0 {
			total += w
			last = i
		}
	}
	if last < 0 {
		return -1
	}
	x := u * total
	var acc float64
	for i, w := range weights {
		if w <= 0 {
			continue
		}
		acc += w
		if x < acc {
			return i
		}
	}
	return last // rounding at the top end
}

// StickyPoint maps key, hashed with salt, into [0, 1): uniform over keys,
// and the same for the same key and salt in every process and release
// (sha256, then the top 53 bits).
func StickyPoint(salt string, key []byte) float64 {
	h := sha256.New()
	h.Write([]byte(salt))
	h.Write([]byte{0}) // salt "a"+key "bc" differs from salt "ab"+key "c"
	h.Write(key)
	var sum [sha256.Size]byte
	return float64(binary.BigEndian.Uint64(h.Sum(sum[:0]))>>11) / (1 << 53)
}

// Mirror reports whether a request with point u in [0, 1) is mirrored to
// the shadow at percent.
func Mirror(percent, u float64) bool { return u*100 < percent }
