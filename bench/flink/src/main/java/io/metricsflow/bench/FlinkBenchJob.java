package io.metricsflow.bench;

import java.time.Duration;
import java.util.HashMap;
import java.util.Map;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.configuration.CheckpointingOptions;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.configuration.PipelineOptions;
import org.apache.flink.configuration.StateBackendOptions;
import org.apache.flink.connector.kafka.source.KafkaSource;
import org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer;
import org.apache.flink.core.execution.CheckpointingMode;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.datastream.SingleOutputStreamOperator;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.ProcessFunction;
import org.apache.flink.streaming.api.windowing.assigners.TumblingEventTimeWindows;
import org.apache.flink.util.Collector;
import org.apache.flink.util.OutputTag;
import org.apache.kafka.clients.consumer.OffsetResetStrategy;

/**
 * The metricsflow worker's 1m job as an Apache Flink DataStream job, for bench/bench_worker.py.
 *
 * <pre>
 * KafkaSource(lp1 records -> samples + the record itself; per-partition bounded-out-of-order
 * watermarks)
 *   -> split: record bytes -> side output -> InfluxDB sink, rp=raw (unchanged)
 *   -> samples -> keyBy(series + field) -> 1m tumbling event-time windows
 *      -> aggregate(StatsAggregate, TierRow) -> InfluxDB sink, rp=1m
 * </pre>
 *
 * Checkpoints every 5 s, EXACTLY_ONCE; state backend {@code hashmap} or {@code rocksdb}
 * (incremental); object reuse on; local MiniCluster (run with {@code java -cp ...}).
 *
 * <p>Arguments: {@code --bootstrap H:P --topic T --group G --influx URL --db DB
 * [--backend hashmap|rocksdb] [--checkpoint-dir DIR] [--parallelism 2] [--bound-ms 10000]
 * [--checkpoint-ms 5000] [--flush-ms 1000]}.
 */
public final class FlinkBenchJob {
    private FlinkBenchJob() {}

    static final OutputTag<byte[]> RAW = new OutputTag<>("raw") {};

    /** Samples on the main output, record bytes on the {@link #RAW} side output. */
    static final class Split extends ProcessFunction<Element, Sample> {
        private static final long serialVersionUID = 1L;

        @Override
        public void processElement(Element e, Context ctx, Collector<Sample> out) {
            if (e.kind == Element.RAW) {
                ctx.output(RAW, e.raw);
            } else {
                out.collect(new Sample(e.key, e.timeNs, e.value));
            }
        }
    }

    public static void main(String[] argv) throws Exception {
        Map<String, String> args = parse(argv);
        String bootstrap = required(args, "bootstrap");
        String topic = required(args, "topic");
        String group = required(args, "group");
        String influx = required(args, "influx");
        String db = required(args, "db");
        String backend = args.getOrDefault("backend", "hashmap");
        if (!backend.equals("hashmap") && !backend.equals("rocksdb")) {
            throw new IllegalArgumentException(
                    "--backend " + backend + ": expected hashmap or rocksdb");
        }
        int parallelism = Integer.parseInt(args.getOrDefault("parallelism", "2"));
        long boundMs = Long.parseLong(args.getOrDefault("bound-ms", "10000"));
        long checkpointMs = Long.parseLong(args.getOrDefault("checkpoint-ms", "5000"));
        long flushMs = Long.parseLong(args.getOrDefault("flush-ms", "1000"));
        String checkpointDir = args.getOrDefault(
                "checkpoint-dir", System.getProperty("java.io.tmpdir") + "/flink-bench-ckpt");

        Configuration conf = new Configuration();
        conf.set(PipelineOptions.OBJECT_REUSE, true);
        conf.set(StateBackendOptions.STATE_BACKEND, backend);
        conf.set(CheckpointingOptions.CHECKPOINT_STORAGE, "filesystem");
        conf.set(CheckpointingOptions.CHECKPOINTS_DIRECTORY, "file://" + checkpointDir);
        conf.set(CheckpointingOptions.INCREMENTAL_CHECKPOINTS, backend.equals("rocksdb"));
        conf.set(CheckpointingOptions.CHECKPOINTING_INTERVAL, Duration.ofMillis(checkpointMs));
        conf.set(CheckpointingOptions.CHECKPOINTING_CONSISTENCY_MODE,
                CheckpointingMode.EXACTLY_ONCE);
        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment(conf);
        env.setParallelism(parallelism);

        KafkaSource<Element> source = KafkaSource.<Element>builder()
                .setBootstrapServers(bootstrap)
                .setTopics(topic)
                .setGroupId(group)
                .setStartingOffsets(OffsetsInitializer.committedOffsets(OffsetResetStrategy.EARLIEST))
                .setDeserializer(new Lp1Deserializer())
                .build();
        WatermarkStrategy<Element> watermarks = WatermarkStrategy
                .<Element>forBoundedOutOfOrderness(Duration.ofMillis(boundMs))
                .withTimestampAssigner((e, kafkaTs) -> Math.floorDiv(e.timeNs, 1_000_000L));

        SingleOutputStreamOperator<Sample> samples = env
                .fromSource(source, watermarks, "kafka lp1")
                .uid("kafka-source")
                .process(new Split())
                .name("split raw / samples")
                .uid("split");
        DataStream<byte[]> raw = samples.getSideOutput(RAW);
        raw.sinkTo(new InfluxWriteSink(influx, db, "raw", 10_000, 2_000_000, flushMs, 2))
                .name("influxdb raw")
                .uid("sink-raw");
        samples
                .keyBy(s -> s.key)
                .window(TumblingEventTimeWindows.of(Duration.ofMinutes(1)))
                .aggregate(new StatsAggregate(), new TierRow())
                .name("1m windows")
                .uid("window-1m")
                .sinkTo(new InfluxWriteSink(influx, db, "1m", 10_000, 2_000_000, flushMs, 2))
                .name("influxdb 1m")
                .uid("sink-1m");

        System.out.printf(
                "flink-bench: flink=%s parallelism=%d backend=%s checkpoint=%dms EXACTLY_ONCE "
                        + "bound=%dms object-reuse=true topic=%s group=%s db=%s%n",
                org.apache.flink.runtime.util.EnvironmentInformation.getVersion(), parallelism,
                backend, checkpointMs, boundMs, topic, group, db);
        env.execute("metricsflow 1m tier (Flink)");
    }

    private static Map<String, String> parse(String[] argv) {
        Map<String, String> out = new HashMap<>();
        for (int i = 0; i < argv.length; i += 2) {
            if (!argv[i].startsWith("--") || i + 1 >= argv.length) {
                throw new IllegalArgumentException("bad argument at " + i + ": " + argv[i]);
            }
            out.put(argv[i].substring(2), argv[i + 1]);
        }
        return out;
    }

    private static String required(Map<String, String> args, String name) {
        String v = args.get(name);
        if (v == null) {
            throw new IllegalArgumentException("--" + name + " is required");
        }
        return v;
    }
}
