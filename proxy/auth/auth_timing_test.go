package auth

import "testing"

// BenchmarkCheck is the allowed path: a key from the Authorization header,
// its digest compared, its scope checked, and (limited) a token taken.
func BenchmarkCheck(b *testing.B) {
	unlimited := Key{ID: "team-a", SHA256: digestHex(secretA), Scopes: []Scope{Predict, Metadata}}
	limited := unlimited
	limited.Rate, limited.Burst = 1e6, 1e6
	for _, bc := range []struct {
		name string
		key  Key
	}{{"unlimited", unlimited}, {"limited", limited}} {
		b.Run(bc.name, func(b *testing.B) {
			a, _ := newTest(b, bc.key)
			authorization := []byte("Bearer " + keyA)
			b.ReportAllocs()
			for b.Loop() {
				if d := a.Check(authorization, nil, Predict, true); !d.Allowed() {
					b.Fatalf("%+v", d)
				}
			}
		})
		b.Run(bc.name+"/parallel", func(b *testing.B) {
			a, _ := newTest(b, bc.key)
			authorization := []byte("Bearer " + keyA)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if d := a.Check(authorization, nil, Predict, true); !d.Allowed() {
						b.Errorf("%+v", d)
						return
					}
				}
			})
		})
	}
}
