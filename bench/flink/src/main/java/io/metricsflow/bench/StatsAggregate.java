package io.metricsflow.bench;

import org.apache.flink.api.common.functions.AggregateFunction;

/**
 * count/sum/min/max/first/last of one window, incrementally (one accumulator per key and
 * window in keyed state). first/last are by event time; on equal timestamps the later arrival
 * wins for last and the earlier for first.
 */
public final class StatsAggregate implements AggregateFunction<Sample, Stats, Stats> {
    private static final long serialVersionUID = 1L;

    @Override
    public Stats createAccumulator() {
        return new Stats();
    }

    @Override
    public Stats add(Sample s, Stats acc) {
        double v = s.value;
        acc.count++;
        acc.sum += v;
        if (v < acc.min) {
            acc.min = v;
        }
        if (v > acc.max) {
            acc.max = v;
        }
        if (s.timeNs < acc.firstNs) {
            acc.firstNs = s.timeNs;
            acc.first = v;
        }
        if (s.timeNs >= acc.lastNs) {
            acc.lastNs = s.timeNs;
            acc.last = v;
        }
        return acc;
    }

    @Override
    public Stats getResult(Stats acc) {
        return acc;
    }

    @Override
    public Stats merge(Stats a, Stats b) {
        Stats m = new Stats();
        m.count = a.count + b.count;
        m.sum = a.sum + b.sum;
        m.min = Math.min(a.min, b.min);
        m.max = Math.max(a.max, b.max);
        Stats f = b.firstNs < a.firstNs ? b : a;
        m.firstNs = f.firstNs;
        m.first = f.first;
        Stats l = b.lastNs >= a.lastNs ? b : a;
        m.lastNs = l.lastNs;
        m.last = l.last;
        return m;
    }
}
