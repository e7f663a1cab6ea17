package io.metricsflow.bench;

/** Accumulator of one (series, field, 1m window): the tier row's aggregates (a POJO). */
public class Stats {
    public long count;
    public double sum;
    public double min = Double.POSITIVE_INFINITY;
    public double max = Double.NEGATIVE_INFINITY;
    public long firstNs = Long.MAX_VALUE;
    public double first;
    public long lastNs = Long.MIN_VALUE;
    public double last;

    public Stats() {}
}
