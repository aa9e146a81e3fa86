package integration_test

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka"
	"github.com/parallafka/parallafka/kafka/franz"
	"github.com/parallafka/parallafka/kafka/kafkatest"
	"github.com/parallafka/parallafka/pipeline"
)

// clientEnv selects the client the suite's members consume with:
// "confluent" (confluent-kafka-go, package kafka; the default) or "franz"
// (franz-go, package kafka/franz). PARALLAFKA_CLIENT=franz go test
// ./kafka/integration runs the same tests over the franz source.
const clientEnv = "PARALLAFKA_CLIENT"

// client returns the client the suite runs over.
func client(t testing.TB) string {
	switch v := os.Getenv(clientEnv); v {
	case "", "confluent":
		return "confluent"
	case "franz":
		return "franz"
	default:
		t.Fatalf("%s=%q: want confluent or franz", clientEnv, v)
		return ""
	}
}

// newBytesSource builds the Source of one member of group over topic, with
// the kafkatest consumer settings plus config (librdkafka property names;
// for franz they are mapped to kgo options), on the client the suite runs
// over.
func newBytesSource(t testing.TB, c *kafkatest.Cluster, group, topic string, config map[string]any, log *slog.Logger) (parallafka.Source[string, []byte], error) {
	return newMemberSource(t, c, group, topic, config, kafka.Bytes, log)
}

// newMemberSource is newBytesSource with values deserialized by value (a
// kafka.Deserializer, the same type as franz.Deserializer).
func newMemberSource[V any](t testing.TB, c *kafkatest.Cluster, group, topic string, config map[string]any,
	value kafka.Deserializer[V], log *slog.Logger) (parallafka.Source[string, V], error) {
	if client(t) == "franz" {
		opts := []kgo.Opt{
			kgo.SeedBrokers(strings.Split(c.Bootstrap(), ",")...),
			kgo.ConsumerGroup(group),
			kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
			kgo.SessionTimeout(6 * time.Second),
			kgo.HeartbeatInterval(500 * time.Millisecond),
			kgo.FetchMaxWait(100 * time.Millisecond),
			kgo.RetryBackoffFn(func(int) time.Duration { return 20 * time.Millisecond }),
			kgo.MetadataMinAge(100 * time.Millisecond),
		}
		more, err := franzOptions(config)
		if err != nil {
			return nil, err
		}
		cl, err := franz.NewClient(append(opts, more...), franz.WithLogger(log))
		if err != nil {
			return nil, err
		}
		src, err := franz.NewSource(cl, []string{topic}, franz.String, value, franz.WithLogger(log))
		if err != nil {
			cl.Close()
			return nil, err
		}
		return src, nil
	}
	cfg := c.ConsumerConfig(group)
	for k, v := range config {
		if err := cfg.SetKey(k, v); err != nil {
			return nil, err
		}
	}
	consumer, err := kafka.NewConsumer(cfg, kafka.WithLogger(log))
	if err != nil {
		return nil, err
	}
	src, err := kafka.NewSource(consumer, []string{topic}, kafka.String, value, kafka.WithLogger(log))
	if err != nil {
		_ = consumer.Close()
		return nil, err
	}
	return src, nil
}

// franzOptions maps the librdkafka settings the suite uses to kgo options.
func franzOptions(config map[string]any) ([]kgo.Opt, error) {
	var opts []kgo.Opt
	ms := func(v any) (time.Duration, error) {
		n, err := strconv.Atoi(fmt.Sprint(v))
		return time.Duration(n) * time.Millisecond, err
	}
	for k, v := range config {
		switch k {
		case "partition.assignment.strategy":
			switch v {
			case "range":
				opts = append(opts, kgo.Balancers(kgo.RangeBalancer()))
			case "roundrobin":
				opts = append(opts, kgo.Balancers(kgo.RoundRobinBalancer()))
			case "cooperative-sticky":
				opts = append(opts, kgo.Balancers(kgo.CooperativeStickyBalancer()))
			default:
				return nil, fmt.Errorf("franz: no balancer for %s=%v", k, v)
			}
		case "group.protocol":
			if v == "consumer" {
				opts = append(opts, kgo.ServerSideBalancer())
			}
		case "max.poll.interval.ms":
			d, err := ms(v)
			if err != nil {
				return nil, err
			}
			opts = append(opts, kgo.RebalanceTimeout(d))
		case "session.timeout.ms":
			d, err := ms(v)
			if err != nil {
				return nil, err
			}
			opts = append(opts, kgo.SessionTimeout(d))
		case "client.id":
			opts = append(opts, kgo.ClientID(fmt.Sprint(v)))
		default:
			return nil, fmt.Errorf("franz: no kgo option for the consumer setting %s", k)
		}
	}
	return opts, nil
}

// committedOf returns the offsets a Source's Commit error says were
// committed, whichever client's error it is (kafka.CommitError is
// franz.CommitError).
func committedOf(err error) []pipeline.Offset {
	var ce *kafka.CommitError
	if errors.As(err, &ce) {
		return ce.Committed
	}
	return nil
}

// TestSuiteOverFranz runs this package's tests again, in a child process,
// over the franz source (PARALLAFKA_CLIENT=franz), so that go test ./...
// covers both clients. Skipped with -short, and inside the child.
func TestSuiteOverFranz(t *testing.T) {
	if os.Getenv(clientEnv) != "" || os.Getenv(crashChildEnv) != "" {
		t.Skip("the child run, or a client chosen by the caller")
	}
	if testing.Short() {
		t.Skip("-short: the confluent run only")
	}
	args := []string{"-test.run", "^Test", "-test.skip", "^TestSuiteOverFranz$", "-test.count", "1"}
	if testing.Verbose() {
		args = append(args, "-test.v")
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), clientEnv+"=franz")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the suite over franz failed: %v\n%s", err, out)
	}
	if testing.Verbose() {
		t.Logf("the suite over franz:\n%s", out)
	}
}

// Both packages export the same error values and types: errors.Is and
// errors.As hold whichever client returned the error and whichever
// package's name the caller tests with, and one deserializer serves both.
func TestClientsShareErrorsAndTypes(t *testing.T) {
	for _, pair := range [][2]error{
		{kafka.ErrUnreachable, franz.ErrUnreachable},
		{kafka.ErrUnknownTopic, franz.ErrUnknownTopic},
		{kafka.ErrClosed, franz.ErrClosed},
		{kafka.ErrCloseTimeout, franz.ErrCloseTimeout},
		{kafka.ErrUnsafeConfig, franz.ErrUnsafeConfig},
		{kafka.ErrDeadLetterTopicMissing, franz.ErrDeadLetterTopicMissing},
	} {
		wrapped := fmt.Errorf("franz: something: %w", pair[1])
		if !errors.Is(wrapped, pair[0]) || pair[0] != pair[1] {
			t.Errorf("%v: not the same value in both packages", pair[0])
		}
	}
	var err error = &franz.DeserializeError{Field: "value", Err: errors.New("bad")}
	var de *kafka.DeserializeError
	if !errors.As(err, &de) {
		t.Error("errors.As with kafka.DeserializeError misses franz's")
	}
	err = &kafka.CommitError{}
	var ce *franz.CommitError
	if !errors.As(err, &ce) {
		t.Error("errors.As with franz.CommitError misses kafka's")
	}
	var d franz.Deserializer[string] = kafka.String
	if v, err := d("t", nil, []byte("x")); err != nil || v != "x" {
		t.Errorf("kafka.String as a franz.Deserializer: %q, %v", v, err)
	}
}
