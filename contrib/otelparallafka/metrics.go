package otelparallafka

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/pipeline"
)

// Metric names. Counters and histograms are recorded by the Observer as
// events happen; gauges are read at collection time from Stats and the
// source's cached watermarks (RegisterGauges).
const (
	MetricPolled          = "parallafka.messages.polled"             // counter {message}, per partition
	MetricHandled         = "parallafka.messages.handled"            // counter {message}: succeeded
	MetricFailed          = "parallafka.messages.failed"             // counter {message}: failed for good (skipped or stopping)
	MetricSkipped         = "parallafka.messages.skipped"            // counter {message}: failed, skipped by the error policy
	MetricRetried         = "parallafka.messages.retried"            // counter {message}: another attempt requested
	MetricDropped         = "parallafka.messages.dropped"            // counter {message}: dropped by a stage (dead-lettered, duplicate)
	MetricHandlerDuration = "parallafka.handler.duration"            // histogram s, per attempt, with parallafka.outcome
	MetricKeyWait         = "parallafka.message.wait.behind_key"     // histogram s: queued behind an earlier message of its key
	MetricHandlerWait     = "parallafka.message.wait.for_handler"    // histogram s: ready, waiting for a free handler
	MetricEndToEnd        = "parallafka.message.end_to_end.duration" // histogram s: record timestamp to handler end
	MetricCommitDuration  = "parallafka.commit.duration"             // histogram s
	MetricBatchDuration   = "parallafka.batch.duration"              // histogram s, per batch handler call (ConsumeBatch), with parallafka.outcome
	MetricCommits         = "parallafka.commits"                     // counter {commit}
	MetricCommitErrors    = "parallafka.commit.errors"               // counter {commit}
	MetricTxnRecords      = "parallafka.transaction.records"         // histogram {record}: output records per transaction (WithTransactions); commits and commit errors count transactions and aborts
	MetricStalls          = "parallafka.partition.stalls"            // counter {stall}, per partition
	MetricInFlight        = "parallafka.messages.in_flight"          // gauge {message}
	MetricInFlightBytes   = "parallafka.messages.in_flight.size"     // gauge By
	MetricQueued          = "parallafka.messages.queued"             // gauge {message}: behind a busy key
	MetricPaused          = "parallafka.partitions.paused"           // gauge {partition}
	MetricStalled         = "parallafka.partitions.stalled"          // gauge {partition}
	MetricAssigned        = "parallafka.partitions.assigned"         // gauge {partition}
	MetricHeldKeys        = "parallafka.keys.held"                   // gauge {key}: held keys, their messages dead-lettered unhandled (parallafka.Parallafka.ReleaseKey)
	MetricLag             = "parallafka.consumer.lag"                // gauge {message}, per partition: high watermark - committed offset (before this member's first commit: - the first offset it read)
	MetricUnread          = "parallafka.consumer.unread"             // gauge {message}, per partition: high watermark - next offset to read
	MetricLimit           = "parallafka.concurrency.limit"           // gauge {handler}
)

type instruments struct {
	polled, handled, failed, skipped, retried, dropped metric.Int64Counter
	commits, commitErrors, stalls                      metric.Int64Counter
	handlerDuration, keyWait, handlerWait, endToEnd    metric.Float64Histogram
	commitDuration, batchDuration, txnRecords          metric.Float64Histogram
	batchOK, batchErr                                  metric.MeasurementOption
	meter                                              metric.Meter
}

// durationBuckets are the histograms' bounds in seconds: 100 µs to 5 min.
var durationBuckets = []float64{0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300}

func newInstruments(m metric.Meter, base []attribute.KeyValue) (instruments, error) {
	var errs []error
	counter := func(name, unit, desc string) metric.Int64Counter {
		c, err := m.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	histogram := func(name, desc string) metric.Float64Histogram {
		h, err := m.Float64Histogram(name, metric.WithUnit("s"), metric.WithDescription(desc),
			metric.WithExplicitBucketBoundaries(durationBuckets...))
		errs = append(errs, err)
		return h
	}
	in := instruments{
		meter:           m,
		polled:          counter(MetricPolled, "{message}", "Messages polled."),
		handled:         counter(MetricHandled, "{message}", "Messages handled successfully."),
		failed:          counter(MetricFailed, "{message}", "Messages that failed for good (skipped, or stopping the pipeline)."),
		skipped:         counter(MetricSkipped, "{message}", "Failed messages skipped by the error policy."),
		retried:         counter(MetricRetried, "{message}", "Attempts a stage asked to retry."),
		dropped:         counter(MetricDropped, "{message}", "Messages a stage dropped (dead-lettered, deduplicated)."),
		commits:         counter(MetricCommits, "{commit}", "Successful commit requests."),
		commitErrors:    counter(MetricCommitErrors, "{commit}", "Failed commit requests."),
		stalls:          counter(MetricStalls, "{stall}", "Times a partition was found stalled."),
		handlerDuration: histogram(MetricHandlerDuration, "Duration of each handling attempt."),
		keyWait:         histogram(MetricKeyWait, "Time a message waited behind an earlier message with its key."),
		handlerWait:     histogram(MetricHandlerWait, "Time a ready message waited for a free handler."),
		endToEnd:        histogram(MetricEndToEnd, "Time from the record's timestamp to its handler's end."),
		commitDuration:  histogram(MetricCommitDuration, "Duration of commit requests."),
		batchDuration:   histogram(MetricBatchDuration, "Duration of each batch handler call."),
		txnRecords:      histogram(MetricTxnRecords, "Output records per committed transaction (WithTransactions)."),
	}
	in.batchOK = metric.WithAttributes(append(append([]attribute.KeyValue(nil), base...), outcomeOK)...)
	in.batchErr = metric.WithAttributes(append(append([]attribute.KeyValue(nil), base...), outcomeError)...)
	return in, errors.Join(errs...)
}

// StatsReader is what RegisterGauges reads: a *parallafka.Parallafka.
type StatsReader interface{ Stats() parallafka.Stats }

// RegisterGauges registers the gauges, read at each collection: in flight
// (messages and bytes), queued behind keys, paused, stalled and assigned
// partitions, held keys, the concurrency limit from p's Stats, and the consumer lag of
// every assigned partition from source's cached watermarks (source may be
// nil, or a source that does not implement pipeline.WatermarkSource: no
// lag then). Nothing asks the broker: a scrape costs no request.
// Unregister the returned registration when p is done.
func (o *Observer) RegisterGauges(p StatsReader, source any) (metric.Registration, error) {
	m := o.m.meter
	var errs []error
	gauge := func(name, unit, desc string) metric.Int64ObservableGauge {
		g, err := m.Int64ObservableGauge(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return g
	}
	inFlight := gauge(MetricInFlight, "{message}", "Messages polled and not yet finished.")
	inFlightBytes := gauge(MetricInFlightBytes, "By", "Bytes of the messages in flight.")
	queued := gauge(MetricQueued, "{message}", "Messages waiting behind an earlier message with their key.")
	paused := gauge(MetricPaused, "{partition}", "Partitions paused.")
	stalled := gauge(MetricStalled, "{partition}", "Partitions stalled now.")
	assigned := gauge(MetricAssigned, "{partition}", "Partitions assigned.")
	held := gauge(MetricHeldKeys, "{key}", "Keys held: their messages go to the dead-letter topic unhandled until released.")
	lag := gauge(MetricLag, "{message}", "High watermark minus the committed offset, per partition.")
	unread := gauge(MetricUnread, "{message}", "High watermark minus the next offset to read, per partition.")
	limit := gauge(MetricLimit, "{handler}", "Handlers allowed to run at once.")
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	watermarks, _ := source.(pipeline.WatermarkSource)
	base := metric.WithAttributes(o.base...)
	return m.RegisterCallback(func(_ context.Context, obs metric.Observer) error {
		st := p.Stats()
		obs.ObserveInt64(inFlight, st.InFlight, base)
		obs.ObserveInt64(inFlightBytes, st.InFlightBytes, base)
		obs.ObserveInt64(queued, st.Queued, base)
		obs.ObserveInt64(paused, int64(len(st.Paused)), base)
		obs.ObserveInt64(stalled, st.Stalled, base)
		obs.ObserveInt64(assigned, st.Assigned, base)
		obs.ObserveInt64(held, st.HeldKeys, base)
		if n := o.limit.Load(); n > 0 {
			obs.ObserveInt64(limit, n, base)
		}
		if watermarks == nil {
			return nil
		}
		o.mu.RLock()
		defer o.mu.RUnlock()
		for tp, part := range o.partitions {
			if !part.assigned.Load() {
				continue
			}
			_, high, ok := watermarks.Watermarks(tp)
			if !ok {
				continue
			}
			// The committed offset, or before this member committed
			// any, the first offset it read (where the group's committed
			// offset was).
			if committed, ok := st.Committed[tp]; ok {
				obs.ObserveInt64(lag, max(0, high-committed), part.attrs)
			} else if first := part.first.Load(); first > 0 {
				obs.ObserveInt64(lag, max(0, high-(first-1)), part.attrs)
			}
			if next := part.next.Load(); next > 0 {
				obs.ObserveInt64(unread, max(0, high-next), part.attrs)
			}
		}
		return nil
	}, inFlight, inFlightBytes, queued, paused, stalled, assigned, held, lag, unread, limit)
}
