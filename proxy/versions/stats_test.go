package versions

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/batchgate/batchgate/batching"
	"github.com/batchgate/batchgate/proxy/rtconn"
)

// eachRun finds the runtime's runs in a batch's results: consecutive
// successful items with the same size and times, at most size of them; a
// failed item is skipped, and a run whose items all failed is not seen.
func TestEachRun(t *testing.T) {
	ok := func(size int, exec time.Duration) batching.Result[*rtconn.Result] {
		return batching.Result[*rtconn.Result]{Value: &rtconn.Result{BatchSize: size, Exec: exec, Transfer: 2 * exec}}
	}
	failed := batching.Result[*rtconn.Result]{Err: errors.New("failed")}
	for _, tc := range []struct {
		name    string
		results []batching.Result[*rtconn.Result]
		want    string
	}{
		{"none", nil, "[]"},
		{"all failed", []batching.Result[*rtconn.Result]{failed, failed}, "[]"},
		{"one run", []batching.Result[*rtconn.Result]{ok(3, 5), ok(3, 5), ok(3, 5)}, "[3:5/10]"},
		{"two runs", []batching.Result[*rtconn.Result]{ok(2, 5), ok(2, 5), ok(2, 7), ok(2, 7)}, "[2:5/10 2:7/14]"},
		{"same time, full runs", []batching.Result[*rtconn.Result]{ok(2, 5), ok(2, 5), ok(2, 5), ok(2, 5)}, "[2:5/10 2:5/10]"},
		{"a failed item", []batching.Result[*rtconn.Result]{ok(3, 5), failed, ok(3, 5), ok(1, 2)}, "[3:5/10 1:2/4]"},
		{"a run lost", []batching.Result[*rtconn.Result]{failed, failed, ok(2, 4), ok(2, 4)}, "[2:4/8]"},
	} {
		var got []string
		eachRun(tc.results, func(size int, exec, transfer time.Duration) {
			got = append(got, fmt.Sprintf("%d:%d/%d", size, exec, transfer))
		})
		if s := fmt.Sprint(got); s != tc.want {
			t.Errorf("%s: got %s, want %s", tc.name, s, tc.want)
		}
	}
}
