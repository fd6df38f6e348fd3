// Package versions serves model versions: the routing table (a routing
// file's models and versions, or routing.Single's one runtime), one runtime
// connection (rtconn) and one batcher (batching) per version, the traffic
// policy of proxy/routing, shadow traffic and rollback. Router implements
// httpapi.Router; proxy/gateway assembles it with the rest of the proxy.
package versions

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/batchgate/batchgate/batching"
	"github.com/batchgate/batchgate/proxy/budget"
	"github.com/batchgate/batchgate/proxy/classify"
	"github.com/batchgate/batchgate/proxy/httpapi"
	"github.com/batchgate/batchgate/proxy/modelstats"
	"github.com/batchgate/batchgate/proxy/routing"
	"github.com/batchgate/batchgate/proxy/rtconn"
	"github.com/batchgate/batchgate/proxy/stats"
	"github.com/batchgate/batchgate/proxy/topk"
	"github.com/batchgate/batchgate/runtime/wire"
)

// Config configures a Router: proxy/gateway passes its own, defaults
// applied (Batch, RequestTimeout and Routing are required).
type Config struct {
	// Batch configures each version's batcher (its Observer is set here).
	Batch batching.Config
	// RequestTimeout bounds a shadow's run and a retired version's drain.
	RequestTimeout time.Duration
	// Runtime configures each version's connection (its Socket and
	// OnStall are set here).
	Runtime rtconn.Config
	// Routing is the table served from the start: a routing file's
	// (docs/versions.md) or routing.Single's.
	Routing *routing.File
	// RoutingFile, if set, is polled every RoutingPoll by Run, and its
	// content applied when it changes from RoutingSHA256's.
	RoutingFile   string
	RoutingPoll   time.Duration
	RoutingSHA256 [32]byte
}

// Router serves the versions of a routing table: one runtime connection
// and one batcher per version, the traffic policy from proxy/routing,
// shadow traffic and rollback. It implements httpapi.Router. A table of
// one undeclared model (routing.Single) is the proxy without a routing
// file: its version has no series of its own and no name in answers, and
// its answers come from cache while its runtime is away.
//
// # Ownership and goroutines
//
//   - The table (models, their versions and policies) is immutable once
//     published in Router.table; apply, on the watcher's goroutine and
//     under Router.mu, builds the next one and swaps it in. Requests load
//     it once and keep the version they were routed to.
//   - Each version owns its Conn and batcher. Its Conn.Run goroutine runs
//     from start until the version is retired (a reload without it, or
//     Close) and exits when its context is cancelled. A retired
//     version's retire goroutine waits for the requests that hold it
//     (version.refs), closes its batcher (queued items are still run) and
//     then stops its Conn; it exits then.
//   - A version's rollback state is its window (replaced when its model's
//     entry changes) and the rolledBack flag, both atomic.
//   - A shadow goroutine runs one mirrored item and exits when the shadow
//     batcher answers (bounded by RequestTimeout); at most max_queue run
//     per shadow version. Close waits for them.
//   - Router.wg counts every goroutine above; Close waits for it. Run is its
//     caller's goroutine.
type Router struct {
	cfg   Config
	log   *slog.Logger
	m     *stats.Metrics
	rm    *stats.Routing // nil for routing.Single's table
	svc   *classify.Service
	ctx   context.Context // ends at close: stops the Conns
	stop  context.CancelFunc
	table atomic.Pointer[table]
	gen   atomic.Int64
	// loadMu makes a table swap and the retired versions' work one step
	// for load, so the summed counters never go back.
	loadMu                     sync.Mutex
	retiredDemand, retiredBusy time.Duration // guarded by loadMu
	mu                         sync.Mutex    // serializes apply and close; guards closing
	closing                    bool
	wg                         sync.WaitGroup
}

type table struct {
	models []*model // file order; the first is the default
	byName map[string]*model
}

type model struct {
	spec     routing.Model
	versions []*version
	byName   map[string]*version
	shadow   *version // nil: none
}

type version struct {
	r       *Router
	model   string // "" for routing.Single's
	name    string // fixed: a version's name and socket never change
	socket  string
	variant atomic.Pointer[string] // the variant required, "" for any
	conn    *rtconn.Conn
	batcher *batching.Batcher[*rtconn.Item, *rtconn.Result]
	metrics *stats.Version     // nil for routing.Single's: the unlabelled series count it
	cancel  context.CancelFunc // stops the Conn
	// stats is the version's statistics extension (GET .../stats,
	// ModelStatistics): its Done, its classifier and its runner record.
	stats modelstats.Recorder

	window     atomic.Pointer[routing.Window] // nil: no rollback limits
	rolledBack atomic.Bool
	weight     atomic.Uint64 // math.Float64bits of the configured weight
	shadows    atomic.Int64  // mirrored items in flight on this version
	// maxShadow is the model's shadow max_queue when this version is its
	// shadow (atomic: a reload may change it while mirrors run).
	maxShadow atomic.Int64

	mu      sync.Mutex // guards refs and retired
	refs    int
	retired bool
	idle    chan struct{} // closed when retired and refs is 0
}

// New returns a Router serving cfg.Routing on svc (whose requests all name
// a Target) and starts its versions' connections; Run watches the routing
// file, Close stops it all.
func New(cfg Config, svc *classify.Service, log *slog.Logger, m *stats.Metrics) *Router {
	ctx, cancel := context.WithCancel(context.Background())
	r := &Router{cfg: cfg, log: log, m: m, svc: svc, ctx: ctx, stop: cancel}
	if cfg.Routing.Models[0].Declared() {
		r.rm = m.NewRouting(func() float64 { return float64(r.gen.Load()) })
	}
	r.table.Store(&table{byName: map[string]*model{}})
	r.apply(cfg.Routing)
	return r
}

// apply makes f the routing: versions new to it start, versions gone from
// it retire once their requests are done, and versions kept (same model,
// name and socket) keep their connection, batcher and queue. A model whose
// entry changed gets fresh rollback windows: that is how a rolled-back
// version comes back.
func (r *Router) apply(f *routing.File) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closing {
		return
	}
	old := r.table.Load()
	next := &table{byName: map[string]*model{}}
	kept := map[*version]bool{}
	for _, ms := range f.Models {
		nm := &model{spec: ms, byName: map[string]*version{}}
		om := old.byName[ms.Name]
		changed := om == nil || !sameModel(om.spec, ms)
		for _, vs := range ms.Versions {
			var v *version
			if om != nil {
				if ov := om.byName[vs.Name]; ov != nil && ov.socket == vs.Socket {
					v = ov
				}
			}
			if v == nil {
				v = r.startVersion(ms.Name, vs)
			} else if changed {
				v.rolledBack.Store(false)
			}
			v.variant.Store(&vs.Variant)
			v.weight.Store(math.Float64bits(vs.Weight))
			if changed || v.window.Load() == nil && vs.Rollback != nil {
				if vs.Rollback != nil {
					v.window.Store(routing.NewWindow(*vs.Rollback))
				} else {
					v.window.Store(nil)
				}
			}
			kept[v] = true
			nm.versions = append(nm.versions, v)
			nm.byName[vs.Name] = v
		}
		if s := ms.Shadow; s != nil {
			nm.shadow = nm.byName[s.Version]
			nm.shadow.maxShadow.Store(int64(s.MaxQueue))
		}
		next.models = append(next.models, nm)
		next.byName[ms.Name] = nm
	}
	r.loadMu.Lock()
	r.table.Store(next)
	for _, om := range old.models {
		for _, v := range om.versions {
			if !kept[v] {
				l := loadOf(v.batcher.Snapshot()) // its work while it drains is not counted
				r.retiredDemand += l.Demand
				r.retiredBusy += l.Busy
			}
		}
	}
	r.loadMu.Unlock()
	r.gen.Add(1)
	for _, om := range old.models {
		for _, v := range om.versions {
			if !kept[v] {
				r.log.Info("version retired: it leaves once its requests are done", "model", v.model, "version", v.name, "socket", v.socket)
				r.retire(v)
			}
		}
	}
	if r.rm == nil {
		return // routing.Single's: nothing to report
	}
	var summary []string
	for _, ms := range f.Models {
		for _, vs := range ms.Versions {
			summary = append(summary, fmt.Sprintf("%s/%s=%g", ms.Name, vs.Name, vs.Weight))
		}
	}
	r.log.Info("routing applied", "generation", r.gen.Load(), "weights", strings.Join(summary, " "))
}

// sameModel reports whether a model's entry is unchanged.
func sameModel(a, b routing.Model) bool { return reflect.DeepEqual(a, b) }

// startVersion creates a version's Conn, batcher and metrics and starts its
// Conn (called under r.mu).
func (r *Router) startVersion(model string, vs routing.Version) *version {
	v := &version{r: r, model: model, name: vs.Name, socket: vs.Socket, idle: make(chan struct{})}
	v.variant.Store(&vs.Variant)
	rc := r.cfg.Runtime
	rc.Socket, rc.OnStall = vs.Socket, func() { r.m.RuntimeStalls.Inc() }
	bc := r.cfg.Batch
	bc.Observer = r.m
	if model == "" { // routing.Single's: no series nor log attributes of its own
		v.conn = rtconn.New(rc, r.log)
		v.batcher = batching.New[*rtconn.Item, *rtconn.Result](v.statsRunner(rtconn.NewRunner(v.conn, r.m)), bc)
		r.runConn(v)
		return v
	}
	v.metrics = r.m.NewVersion(model, vs.Name, stats.VersionGauges{
		QueueDepth:  func() float64 { return float64(v.primaryDepth()) },
		ShadowDepth: func() float64 { return float64(v.shadows.Load()) },
		Connected: func() float64 {
			if _, ready := v.current(); ready {
				return 1
			}
			return 0
		},
		Weight:     func() float64 { return v.effectiveWeight() },
		RolledBack: func() float64 { return b2f(v.rolledBack.Load()) },
	})
	v.conn = rtconn.New(rc, r.log.With("version", vs.Name))
	bc.Observer = v.metrics
	v.batcher = batching.New[*rtconn.Item, *rtconn.Result](v.statsRunner(rtconn.NewRunner(v.conn, r.m)), bc)
	r.runConn(v)
	r.log.Info("version started", "model", model, "version", vs.Name, "socket", vs.Socket, "weight", vs.Weight)
	return v
}

// runConn starts v's Conn.Run goroutine, owned by r.wg; it exits when v is
// retired or r closes.
func (r *Router) runConn(v *version) {
	ctx, cancel := context.WithCancel(r.ctx)
	v.cancel = cancel
	r.wg.Go(func() { v.conn.Run(ctx) })
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// retire closes v once no request holds it (called under r.mu, or by
// close).
func (r *Router) retire(v *version) {
	v.mu.Lock()
	if v.retired {
		v.mu.Unlock()
		return
	}
	v.retired = true
	if v.refs == 0 {
		close(v.idle)
	}
	v.mu.Unlock()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		// Requests that hold v finish within their deadlines; a handler
		// that panicked before Done is not waited for past that.
		select {
		case <-v.idle:
		case <-time.After(r.cfg.RequestTimeout + 10*time.Second):
			r.log.Warn("retiring a version with requests still counted", "model", v.model, "version", v.name)
		}
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.RequestTimeout)
		if err := v.batcher.Close(ctx); err != nil {
			r.log.Warn("retired version's queue not fully drained", "model", v.model, "version", v.name, "error", err)
		}
		cancel()
		v.cancel()
		if v.metrics != nil {
			v.metrics.Unregister()
		}
	}()
}

// acquire holds v for a request; false if v is retired.
func (v *version) acquire() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.retired {
		return false
	}
	v.refs++
	return true
}

func (v *version) release() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.refs--
	if v.refs == 0 && v.retired {
		close(v.idle)
	}
}

// current returns v's handshake and whether v can serve: a ready runtime
// connected, serving the configured variant.
func (v *version) current() (wire.Info, bool) {
	c, info := v.conn.Current()
	if c == nil {
		return info, false
	}
	if want := *v.variant.Load(); want != "" && info.Variant != want {
		return info, false
	}
	return info, true
}

// effectiveWeight is the configured weight, 0 once rolled back.
func (v *version) effectiveWeight() float64 {
	if v.rolledBack.Load() {
		return 0
	}
	return math.Float64frombits(v.weight.Load())
}

// primaryDepth is the version's waiting and running items less its
// mirrored ones: the autoscaling signal's share.
func (v *version) primaryDepth() int64 {
	s := v.batcher.Snapshot()
	return max(int64(s.Waiting+s.InFlight)-v.shadows.Load(), 0)
}

// QueueDepth sums every version's primary depth: inference_queue_depth,
// the autoscaling signal.
func (r *Router) QueueDepth() float64 {
	var n int64
	for _, m := range r.table.Load().models {
		for _, v := range m.versions {
			n += v.primaryDepth()
		}
	}
	return float64(n)
}

// Load is the runtimes' load as the autoscaling series export it
// (stats.Gauges): work offered and done so far, and the expected wait.
type Load struct{ Demand, Busy, Wait time.Duration }

// loadOf reads a batcher's snapshot: the expected wait is every waiting
// and running item times the measured runtime time per item (the runtime
// runs one batch at a time; ItemTime excludes the pipelined overlap).
func loadOf(s batching.Snapshot) Load {
	return Load{Demand: s.Demand, Busy: s.Busy, Wait: time.Duration(s.Waiting+s.InFlight) * s.ItemTime}
}

// Load sums every version's runtime work, the retired versions' work up to
// their retirement included (so the counters never go back), and takes the
// longest expected wait.
func (r *Router) Load() Load {
	r.loadMu.Lock()
	defer r.loadMu.Unlock()
	l := Load{Demand: r.retiredDemand, Busy: r.retiredBusy}
	for _, m := range r.table.Load().models {
		for _, v := range m.versions {
			vl := loadOf(v.batcher.Snapshot())
			l.Demand += vl.Demand
			l.Busy += vl.Busy
			l.Wait = max(l.Wait, vl.Wait)
		}
	}
	return l
}

// Ready reports whether every model is ready (model.ready): /readyz and
// inference_runtime_connected.
func (r *Router) Ready() bool {
	t := r.table.Load()
	if len(t.models) == 0 {
		return false
	}
	for _, m := range t.models {
		if !m.ready() {
			return false
		}
	}
	return true
}

// ready reports whether the model may take traffic (routing.Serving): with
// 90/10, only once the 90 is ready, while a broken 10 never blocks it;
// with 50/50 either one serves alone. Until then the model's traffic gets
// 503 (pick), never a canary's answer.
func (m *model) ready() bool {
	var total, ready float64
	for _, v := range m.versions {
		w := v.effectiveWeight()
		total += w
		if _, rd := v.current(); rd {
			ready += w
		}
	}
	return routing.Serving(ready, total)
}

func (t *table) model(name string) (*model, error) {
	if name == "" && len(t.models) > 0 {
		return t.models[0], nil
	}
	if m := t.byName[name]; m != nil {
		return m, nil
	}
	names := make([]string, len(t.models))
	for i, m := range t.models {
		names[i] = m.spec.Name
	}
	return nil, &httpapi.NotFoundError{Msg: fmt.Sprintf("unknown model %.100q; this server serves %s", name, strings.Join(names, ", "))}
}

// Declared implements httpapi.Router: false for routing.Single's table.
func (r *Router) Declared() bool { return r.rm != nil }

// LastModel implements httpapi.Router.
func (r *Router) LastModel(name, ver string) (wire.Info, bool) {
	m, err := r.table.Load().model(name)
	if err != nil {
		return wire.Info{}, false
	}
	var last wire.Info
	known := false
	for _, v := range m.versions {
		if ver != "" && v.name != ver {
			continue
		}
		if info, ready := v.current(); ready {
			return info, true
		}
		if info, ok := v.conn.LastInfo(); ok && !known {
			last, known = info, true
		}
	}
	return last, known
}

// Models lists the models of a routing file, in its order (the first is
// the default); nil for routing.Single's table, whose one model is named
// by its runtime's handshake.
func (r *Router) Models() []string {
	if !r.Declared() {
		return nil
	}
	t := r.table.Load()
	names := make([]string, len(t.models))
	for i, m := range t.models {
		names[i] = m.spec.Name
	}
	return names
}

// Versions implements httpapi.Router.
func (r *Router) Versions(name string) ([]httpapi.VersionStatus, bool) {
	m, err := r.table.Load().model(name)
	if err != nil {
		return nil, false
	}
	out := make([]httpapi.VersionStatus, 0, len(m.versions))
	for _, v := range m.versions {
		info, ready := v.current()
		if _, known := v.conn.LastInfo(); !known {
			info = wire.Info{}
		}
		out = append(out, httpapi.VersionStatus{Name: v.name, Ready: ready, Weight: v.effectiveWeight(),
			RolledBack: v.rolledBack.Load(), Shadow: m.shadow == v, Variant: info.Variant, ModelSHA256: info.ModelSHA256})
	}
	return out, true
}

// Route implements httpapi.Router.
func (r *Router) Route(name, ver string, keys httpapi.RouteKeys) (*httpapi.Routed, error) {
	for range 3 { // a reload may retire the version picked: pick again
		t := r.table.Load()
		m, err := t.model(name)
		if err != nil {
			return nil, err
		}
		v, err := m.pick(ver, keys)
		if err != nil {
			return nil, err
		}
		if !v.acquire() {
			continue
		}
		target := classify.Target{Backend: v, Tag: m.spec.Name + "/" + v.name}
		if ver != "" {
			target.Backend = explicitVersion{v} // kept out of the rollback window
		}
		name := v.name
		switch {
		case !m.spec.Declared():
			target.Tag, name = "", "" // the single model's cache keys; no version shown
		case m.spec.ShareCache:
			target.Tag = m.spec.Name
		}
		if s := m.shadow; s != nil && s != v && routing.Mirror(m.spec.Shadow.Percent, rand.Float64()) {
			target.Mirror = func(ctx context.Context, tensor []float32, info wire.Info, scores []float32) {
				r.mirror(s, trace.SpanContextFromContext(ctx), tensor, info, scores)
			}
		}
		var once sync.Once
		return &httpapi.Routed{
			Version:    name,
			Classifier: versionClassifier{r.svc, target, &v.stats},
			Done: func(status int, took time.Duration) {
				once.Do(func() {
					if v.metrics != nil {
						v.metrics.Request(status, took)
					}
					v.stats.Request(status >= 200 && status < 300, took, time.Now())
					v.release()
				})
			},
		}, nil
	}
	return nil, classify.ErrUnavailable
}

// pick chooses a version: ver if set, else the weighted split over the
// ready versions, sticky when the policy says so.
func (m *model) pick(ver string, keys httpapi.RouteKeys) (*version, error) {
	if !m.spec.Declared() {
		// routing.Single's one version, ready or not: classify answers
		// from cache while its runtime is away.
		return m.versions[0], nil
	}
	if ver != "" {
		if v := m.byName[ver]; v != nil {
			return v, nil // explicit: whatever its weight or state
		}
		names := make([]string, len(m.versions))
		for i, v := range m.versions {
			names[i] = v.name
		}
		return nil, &httpapi.NotFoundError{Msg: fmt.Sprintf("unknown version %.64q of model %q; its versions are %s",
			ver, m.spec.Name, strings.Join(names, ", "))}
	}
	if !m.ready() {
		return nil, fmt.Errorf("%w: the versions of model %q holding most of its weight are not ready yet", classify.ErrUnavailable, m.spec.Name)
	}
	var weights [routing.MaxVersions]float64
	for i, v := range m.versions {
		if _, ready := v.current(); ready {
			weights[i] = v.effectiveWeight()
		}
	}
	u := -1.0
	if s := m.spec.Sticky; s != nil {
		var key []byte
		switch {
		case s.Image:
			key = keys.Body
		case keys.Header != nil:
			key = keys.Header(s.Header)
		}
		if len(key) > 0 {
			u = routing.StickyPoint(s.Salt, key)
		}
	}
	if u < 0 {
		u = rand.Float64()
	}
	i := routing.Pick(weights[:len(m.versions)], u)
	if i < 0 {
		return nil, fmt.Errorf("%w: no version of model %q with a weight above 0 is ready", classify.ErrUnavailable, m.spec.Name)
	}
	return m.versions[i], nil
}

// Model and Infer make version a classify.Backend.
func (v *version) Model() (wire.Info, bool, bool) {
	info, ready := v.current()
	if ready {
		return info, true, true
	}
	info, known := v.conn.LastInfo()
	return info, false, known
}

func (v *version) Infer(ctx context.Context, tensor []float32, modelSHA string) (*classify.Inference, error) {
	return v.infer(ctx, tensor, modelSHA, false)
}

// explicitVersion is a version's backend for a request that chose it
// (X-Model-Version, /versions/{v}): its results feed the rollback window
// only where the version's rollback says count_explicit, so that whoever
// may choose a version cannot push a canary into rollback by sending it
// traffic the weights would not.
type explicitVersion struct{ *version }

func (e explicitVersion) Infer(ctx context.Context, tensor []float32, modelSHA string) (*classify.Inference, error) {
	return e.infer(ctx, tensor, modelSHA, true)
}

func (v *version) infer(ctx context.Context, tensor []float32, modelSHA string, explicit bool) (*classify.Inference, error) {
	item := rtconn.NewItem(ctx, tensor, modelSHA)
	res, err := v.batcher.Submit(ctx, item)
	rtconn.TraceQueue(ctx, item, res, err)
	v.observe(ctx, time.Since(item.Submitted), err, explicit)
	if err != nil {
		return nil, err
	}
	v.stats.Computed(res.QueueWait, res.Exec, res.Transfer)
	return &classify.Inference{Scores: res.Scores, BatchSize: res.BatchSize, QueueWait: res.QueueWait, Exec: res.Exec, Transfer: res.Transfer}, nil
}

// observe feeds the rollback window with a request's time in the version
// and whether the version failed it. The caller's own cancellations and
// deadlines, a full queue (overload) and bad inputs are not the version's
// failures and are not counted; nor are explicitly routed requests, unless
// the rollback counts them (count_explicit).
func (v *version) observe(ctx context.Context, took time.Duration, err error, explicit bool) {
	w := v.window.Load()
	if w == nil || explicit && !w.CountsExplicit() {
		return
	}
	var ie *rtconn.ItemError
	if err != nil && (ctx.Err() != nil || errors.Is(err, batching.ErrQueueFull) || errors.As(err, &ie) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		return
	}
	if b := w.Observe(took, err != nil); b != nil {
		v.r.rollback(v, w, b)
	}
}

// rollback sets v's weight to 0 after a breach of window w, unless that
// would leave its model without traffic.
func (r *Router) rollback(v *version, w *routing.Window, b *routing.Breach) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if v.window.Load() != w { // a reload replaced the window meanwhile
		return
	}
	m := r.table.Load().byName[v.model]
	if m == nil || m.byName[v.name] != v {
		return
	}
	others := false
	for _, o := range m.versions {
		if o != v && o.effectiveWeight() > 0 {
			others = true
		}
	}
	if !others {
		r.log.Error("rollback limits breached, but rolling back would leave the model with no traffic: version kept",
			"model", v.model, "version", v.name, "reason", b.Reason)
		return
	}
	v.rolledBack.Store(true)
	v.metrics.Rollbacks.Inc()
	r.log.Error("version rolled back: weight set to 0 until its model's entry in the routing file changes",
		"model", v.model, "version", v.name, "reason", b.Reason, "requests", b.Requests,
		"error_rate", b.ErrorRate, "p99_ms", b.P99.Milliseconds())
}

// mirror sends a copy of a primary's computed image to the shadow version
// s, unless s is busy: shadow work never waits for queue space and is
// dropped first (counted as shed).
func (r *Router) mirror(s *version, sc trace.SpanContext, tensor []float32, pinfo wire.Info, primary []float32) {
	sinfo, ready := s.current()
	if !ready || sinfo.ImageSize() != pinfo.ImageSize() || sinfo.Classes != len(primary) ||
		sinfo.Mean != pinfo.Mean || sinfo.Std != pinfo.Std || sinfo.ResizeShorter != pinfo.ResizeShorter {
		s.metrics.ShadowErrors.Inc() // not ready, or another input or output shape
		return
	}
	limit := s.maxShadow.Load()
	snap := s.batcher.Snapshot()
	if s.shadows.Add(1) > limit || int64(snap.Waiting+snap.InFlight) >= limit {
		s.shadows.Add(-1)
		s.metrics.ShadowShed.Inc()
		return
	}
	r.mu.Lock()
	if r.closing {
		r.mu.Unlock()
		s.shadows.Add(-1)
		return
	}
	r.wg.Add(1)
	r.mu.Unlock()
	go func() {
		defer r.wg.Done()
		defer s.shadows.Add(-1)
		ctx, cancel := context.WithTimeout(r.ctx, r.cfg.RequestTimeout)
		defer cancel()
		// The request's span, without its deadline: the shadow's batch
		// links to it, and shows in its trace.
		item := rtconn.NewItem(trace.ContextWithSpanContext(ctx, sc), tensor, sinfo.ModelSHA256)
		start := item.Submitted
		res, err := s.batcher.Submit(ctx, item)
		if err != nil {
			s.metrics.ShadowErrors.Inc()
			return
		}
		s.metrics.ShadowLatency.Update(time.Since(start).Seconds())
		if topk.Indices(res.Scores, 1)[0] == topk.Indices(primary, 1)[0] {
			s.metrics.ShadowAgree.Inc()
		} else {
			s.metrics.ShadowDisagree.Inc()
		}
	}()
}

// Close retires every version (their queues drain within ctx), waits for
// the shadows and stops the Conns: when it returns, every goroutine r
// started has exited.
func (r *Router) Close(ctx context.Context) error {
	r.mu.Lock()
	r.closing = true
	t := r.table.Load()
	r.mu.Unlock()
	var (
		wg   sync.WaitGroup
		emu  sync.Mutex
		errs []error
	)
	for _, m := range t.models {
		for _, v := range m.versions {
			wg.Go(func() {
				if err := v.batcher.Close(ctx); err != nil {
					emu.Lock()
					errs = append(errs, fmt.Errorf("model %s version %s: %w", v.model, v.name, err))
					emu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	r.stop()
	r.wg.Wait()
	return errors.Join(errs...)
}

// versionClassifier is httpapi's Classifier for one routed request. It
// counts its outcomes in its version's statistics.
type versionClassifier struct {
	svc   *classify.Service
	t     classify.Target
	stats *modelstats.Recorder
}

func (c versionClassifier) Model() (wire.Info, bool) {
	info, ready, _ := c.t.Backend.Model()
	return info, ready
}

func (c versionClassifier) LastModel() (wire.Info, bool) {
	info, _, known := c.t.Backend.Model()
	return info, known
}

func (c versionClassifier) Classify(ctx context.Context, data []byte, lease *budget.Lease, noCache bool) (*classify.Outcome, error) {
	start := time.Now()
	out, err := c.svc.ClassifyOn(ctx, c.t, data, lease, noCache)
	if err == nil {
		recordOutcome(c.stats, out, !noCache, time.Since(start))
	}
	return out, err
}

func (c versionClassifier) InferTensor(ctx context.Context, tensor []float32) (*classify.Outcome, error) {
	out, err := c.svc.InferTensorOn(ctx, c.t, tensor)
	if err == nil {
		recordOutcome(c.stats, out, false, 0)
	}
	return out, err
}

// Run polls the routing file, if there is one, and applies each valid new
// content until ctx ends. Its caller owns the goroutine (proxy/gateway's
// Shutdown waits for it).
func (r *Router) Run(ctx context.Context) {
	if r.cfg.RoutingFile == "" {
		<-ctx.Done()
		return
	}
	routing.Watch(ctx, r.cfg.RoutingFile, r.cfg.RoutingPoll, r.cfg.RoutingSHA256,
		func(f *routing.File) {
			r.apply(f)
			r.rm.Applied.Inc()
		},
		func(err error) {
			r.rm.Rejected.Inc()
			r.log.Error("routing file rejected", "path", r.cfg.RoutingFile, "error", err.Error())
		})
}
