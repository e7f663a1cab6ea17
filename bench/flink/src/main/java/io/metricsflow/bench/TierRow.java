package io.metricsflow.bench;

import java.nio.charset.StandardCharsets;
import org.apache.flink.streaming.api.functions.windowing.ProcessWindowFunction;
import org.apache.flink.streaming.api.windowing.windows.TimeWindow;
import org.apache.flink.util.Collector;

/**
 * One fired window -> one line of the 1m tier, named as metricsflow's tiers name them
 * (metricsflow/sinks/lines.py, docs/influxdb-layout.md):
 * {@code <series key> count_f=<n>i,sum_f=..,min_f=..,max_f=..,mean_f=..,first_f=..,last_f=..
 * <window start ns>}; a non-finite aggregate is left out of its line, as ours does.
 */
public final class TierRow extends ProcessWindowFunction<Stats, byte[], String, TimeWindow> {
    private static final long serialVersionUID = 1L;

    @Override
    public void process(String key, Context ctx, Iterable<Stats> results, Collector<byte[]> out) {
        Stats a = results.iterator().next();
        int cut = key.indexOf('\n');
        String series = key.substring(0, cut);
        String f = key.substring(cut + 1);
        StringBuilder b = new StringBuilder(series.length() + 8 * f.length() + 160);
        b.append(series).append(" count_").append(f).append('=').append(a.count).append('i');
        append(b, "sum_", f, a.sum);
        append(b, "min_", f, a.min);
        append(b, "max_", f, a.max);
        append(b, "mean_", f, a.sum / a.count);
        append(b, "first_", f, a.first);
        append(b, "last_", f, a.last);
        b.append(' ').append(ctx.window().getStart() * 1_000_000L);
        out.collect(b.toString().getBytes(StandardCharsets.UTF_8));
    }

    private static void append(StringBuilder b, String agg, String f, double v) {
        if (Double.isFinite(v)) {
            b.append(',').append(agg).append(f).append('=').append(v);
        }
    }
}
