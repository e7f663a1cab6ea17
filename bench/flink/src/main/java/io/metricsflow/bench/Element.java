package io.metricsflow.bench;

/**
 * What the Kafka source emits: a tagged union of the two things one {@code lp1} record holds.
 *
 * <ul>
 *   <li>{@link #SAMPLE}: one numeric field of one point ({@code key} = series key + '\n' + field
 *       key, both escaped as in the line, {@code timeNs}, {@code value});
 *   <li>{@link #RAW}: the record value itself ({@code raw}, unchanged, for the raw tier), with
 *       {@code timeNs} = the earliest point of the record.
 * </ul>
 *
 * <p>Emitted by the source (not by a later flatMap) so that the timestamp assigner and the
 * per-partition watermark generators of the Kafka source see every point's event time.
 */
public class Element {
    public static final byte SAMPLE = 0;
    public static final byte RAW = 1;

    public byte kind;
    public String key;
    public long timeNs;
    public double value;
    public byte[] raw;

    public Element() {}

    static Element sample(String key, long timeNs, double value) {
        Element e = new Element();
        e.kind = SAMPLE;
        e.key = key;
        e.timeNs = timeNs;
        e.value = value;
        return e;
    }

    static Element raw(byte[] raw, long timeNs) {
        Element e = new Element();
        e.kind = RAW;
        e.raw = raw;
        e.timeNs = timeNs;
        return e;
    }
}
