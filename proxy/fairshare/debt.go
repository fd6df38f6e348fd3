package fairshare

import (
	"context"
	"sync"
	"time"
)

// DebtConfig sizes a Debt.
type DebtConfig struct {
	// Rate is how many bytes of a client's debt are forgiven a second.
	// Zero turns Debt off: nobody waits.
	Rate int64
	// Allowance is the debt a client may carry and still be served at
	// once. Zero means 8 x Rate.
	Allowance int64
	// MaxWait is the longest one request waits for its client's debt to
	// come within the allowance; a request that would wait longer waits
	// MaxWait and is then refused. Zero means 2 s.
	MaxWait time.Duration
	// MaxDebt caps a client's debt, so that a client that stopped is
	// served again within (MaxDebt-Allowance)/Rate. Zero means the
	// allowance plus a minute of Rate.
	MaxDebt int64
}

// Debt holds what each client owes for its refused requests. Its mutex
// guards the accounts; an account is dropped once its debt has drained,
// so the map holds only clients refused within the last few seconds.
type Debt struct {
	cfg      DebtConfig
	mu       sync.Mutex
	accounts map[string]*account
	swept    time.Time // when drained accounts were last dropped
}

// account is one client's debt in bytes, as of at.
type account struct {
	owed float64
	at   time.Time
}

// NewDebt returns a Debt sized by cfg.
func NewDebt(cfg DebtConfig) *Debt {
	if cfg.Allowance <= 0 {
		cfg.Allowance = 8 * cfg.Rate
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = 2 * time.Second
	}
	if cfg.MaxDebt <= 0 {
		cfg.MaxDebt = cfg.Allowance + 60*cfg.Rate
	}
	return &Debt{cfg: cfg, accounts: map[string]*account{}}
}

// owed returns name's debt now, drained since it was last charged, and
// its account (nil if none). d.mu is held.
func (d *Debt) owed(name string, now time.Time) (float64, *account) {
	a := d.accounts[name]
	if a == nil {
		return 0, nil
	}
	return max(0, a.owed-now.Sub(a.at).Seconds()*float64(d.cfg.Rate)), a
}

// Charge adds bytes to name's debt: the cost of a request it got refused.
func (d *Debt) Charge(name string, bytes int64) {
	if d == nil || d.cfg.Rate <= 0 || bytes <= 0 {
		return
	}
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	owed, a := d.owed(name, now)
	if a == nil {
		a = &account{}
		d.accounts[name] = a
	}
	a.owed, a.at = min(owed+float64(bytes), float64(d.cfg.MaxDebt)), now
	if now.Sub(d.swept) > time.Second {
		d.swept = now
		for k := range d.accounts {
			if o, _ := d.owed(k, now); o == 0 {
				delete(d.accounts, k)
			}
		}
	}
}

// Owed returns name's debt in bytes now.
func (d *Debt) Owed(name string) int64 {
	if d == nil || d.cfg.Rate <= 0 {
		return 0
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	o, _ := d.owed(name, time.Now())
	return int64(o)
}

// Wait holds a request of name's while its debt is past the allowance:
// until it is within it (nil), or for at most MaxWait and ctx's deadline,
// after which it returns ErrBusy and how long the client should wait
// before its next request. Holding, rather than refusing at once, is the
// point: a client that retries without pause is slowed to one request per
// MaxWait a connection.
func (d *Debt) Wait(ctx context.Context, name string) (retryAfter time.Duration, err error) {
	if d == nil || d.cfg.Rate <= 0 {
		return 0, nil
	}
	d.mu.Lock()
	owed, _ := d.owed(name, time.Now())
	d.mu.Unlock()
	over := owed - float64(d.cfg.Allowance)
	if over <= 0 {
		return 0, nil
	}
	need := time.Duration(over / float64(d.cfg.Rate) * float64(time.Second))
	hold := min(need, d.cfg.MaxWait)
	if dl, ok := ctx.Deadline(); ok {
		hold = min(hold, time.Until(dl))
	}
	t := time.NewTimer(hold)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return need, ctx.Err()
	}
	if hold < need {
		return need - hold, ErrBusy
	}
	return 0, nil
}
