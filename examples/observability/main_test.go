package main

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestObservability runs the example (embedded broker, or KAFKA_BROKERS)
// and checks what an operator sees over HTTP: /healthz turns unhealthy
// while the slow key stalls its partition and healthy after; /metrics
// counts the stall, has the latency histograms, and shows the consumer
// lag at 0 once everything is committed.
func TestObservability(t *testing.T) {
	const messages = 600
	addrCh := make(chan string, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, config{
			brokers: os.Getenv("KAFKA_BROKERS"), addr: "127.0.0.1:0", messages: messages,
			slowFor: 4 * time.Second, stallTimeout: time.Second, linger: -1,
			traces: io.Discard, logger: slog.New(slog.DiscardHandler),
			listening: func(addr string) { addrCh <- addr },
		})
	}()
	var base string
	select {
	case addr := <-addrCh:
		base = "http://" + addr
	case err := <-done:
		t.Fatalf("run: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("the server did not start")
	}
	client := &http.Client{Timeout: 5 * time.Second}

	// The stall: /healthz answers 503, naming the slow key.
	code, body := waitHealth(t, client, base, http.StatusServiceUnavailable, "stalled")
	t.Logf("/healthz while stalled: %d %s", code, body)
	assert(t, strings.Contains(body, `"slow"`), "the health body names the blocking key: %q", body)
	m := scrape(t, client, base)
	assert(t, sum(m, "parallafka_partition_stalls_total") >= 1, "the stall is counted")
	assert(t, sum(m, "parallafka_partitions_stalled") >= 1, "the stalled gauge shows it")

	// It clears once the slow message finished.
	waitHealth(t, client, base, http.StatusOK, "ok")

	// Everything handled and committed: lag 0 on every partition.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		m = scrape(t, client, base)
		lag, ok := m["parallafka_consumer_lag"]
		if ok && len(lag.Metric) == 3 && sum(m, "parallafka_consumer_lag") == 0 &&
			sum(m, "parallafka_messages_handled_total") == messages {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lag never reached 0: lag %v, handled %v", sum(m, "parallafka_consumer_lag"), sum(m, "parallafka_messages_handled_total"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	assert(t, sum(m, "parallafka_messages_polled_total") == messages, "polled %v", sum(m, "parallafka_messages_polled_total"))
	assert(t, sum(m, "parallafka_partition_stalls_total") >= 1, "the stall stays counted")
	assert(t, sum(m, "parallafka_partitions_stalled") == 0, "nothing stalled now")
	for _, h := range []string{
		"parallafka_handler_duration_seconds",
		"parallafka_message_end_to_end_duration_seconds",
		"parallafka_message_wait_behind_key_seconds",
		"parallafka_message_wait_for_handler_seconds",
	} {
		assert(t, histogramCount(m, h) >= messages, "%s counts every message: %v", h, histogramCount(m, h))
	}
	slowest := 0.0
	for _, mt := range m["parallafka_handler_duration_seconds"].Metric {
		for _, b := range mt.GetHistogram().GetBucket() {
			if b.GetCumulativeCount() < mt.GetHistogram().GetSampleCount() {
				slowest = max(slowest, b.GetUpperBound())
			}
		}
	}
	assert(t, slowest >= 2.5, "the slow handler is in the histogram's tail (above %vs)", slowest)
	assert(t, histogramCount(m, "parallafka_commit_duration_seconds") > 0, "commits are timed")

	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func assert(t *testing.T, ok bool, format string, args ...any) {
	t.Helper()
	if !ok {
		t.Errorf(format, args...)
	}
}

// waitHealth polls /healthz until it answers code with a body containing
// want.
func waitHealth(t *testing.T, client *http.Client, base string, code int, want string) (int, string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := client.Get(base + "/healthz")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == code && strings.Contains(string(b), want) {
				return resp.StatusCode, string(b)
			}
			if time.Now().After(deadline) {
				t.Fatalf("/healthz never answered %d %q; last %d %q", code, want, resp.StatusCode, b)
			}
		} else if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// scrape reads /metrics with an HTTP client and parses the text format.
func scrape(t *testing.T, client *http.Client, base string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := client.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	m, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// sum adds up a counter's or gauge's samples.
func sum(m map[string]*dto.MetricFamily, name string) float64 {
	total := 0.0
	for _, mt := range m[name].GetMetric() {
		total += mt.GetCounter().GetValue() + mt.GetGauge().GetValue()
	}
	return total
}

// histogramCount adds up a histogram's sample counts.
func histogramCount(m map[string]*dto.MetricFamily, name string) uint64 {
	var n uint64
	for _, mt := range m[name].GetMetric() {
		n += mt.GetHistogram().GetSampleCount()
	}
	return n
}
