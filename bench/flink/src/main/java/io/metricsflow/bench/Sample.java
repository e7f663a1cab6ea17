package io.metricsflow.bench;

/** One numeric sample after the split: the key is series key + '\n' + field key. */
public class Sample {
    public String key;
    public long timeNs;
    public double value;

    public Sample() {}

    public Sample(String key, long timeNs, double value) {
        this.key = key;
        this.timeNs = timeNs;
        this.value = value;
    }
}
