package io.metricsflow.bench;

import java.io.IOException;
import org.apache.flink.util.Collector;

/**
 * Parser of canonical line protocol (one point per line, '\n' separated, timestamp in ns always
 * present): {@code <series key> <field>=<value>[,...] <time_ns>}. Escapes (backslash) in names
 * and quoted string values are honoured. Numeric fields (float, {@code i} integer, {@code u}
 * unsigned) become samples; booleans and strings are raw-tier only, as in metricsflow.
 */
final class LineProtocol {
    private LineProtocol() {}

    /** Emits one sample per numeric field of every line; returns the earliest timestamp. */
    static long parse(String s, String where, Collector<Element> out) throws IOException {
        long minNs = Long.MAX_VALUE;
        int n = s.length();
        int start = 0;
        int lineNo = 0;
        while (start < n) {
            int end = s.indexOf('\n', start);
            if (end < 0) {
                end = n;
            }
            lineNo++;
            if (end > start) {
                long ts = parseLine(s, start, end, where, lineNo, out);
                if (ts < minNs) {
                    minNs = ts;
                }
            }
            start = end + 1;
        }
        if (minNs == Long.MAX_VALUE) {
            throw new IOException(where + ": record holds no point");
        }
        return minNs;
    }

    private static IOException error(
            String where, int lineNo, int column, String s, int start, int end, String what) {
        return new IOException(
                where + ": line " + lineNo + " column " + column + ": " + what + ": "
                        + s.substring(start, Math.min(end, start + 200)));
    }

    private static long parseLine(
            String s, int start, int end, String where, int lineNo, Collector<Element> out)
            throws IOException {
        int i = start;
        while (i < end) {
            char c = s.charAt(i);
            if (c == '\\') {
                i += 2;
            } else if (c == ' ') {
                break;
            } else {
                i++;
            }
        }
        if (i >= end || i == start) {
            throw error(where, lineNo, i - start + 1, s, start, end, "no fields");
        }
        String series = s.substring(start, i);
        int lastSpace = s.lastIndexOf(' ', end - 1);
        if (lastSpace <= i) {
            throw error(where, lineNo, i - start + 1, s, start, end, "no timestamp");
        }
        long ts;
        try {
            ts = Long.parseLong(s, lastSpace + 1, end, 10);
        } catch (NumberFormatException e) {
            throw error(where, lineNo, lastSpace - start + 2, s, start, end, "bad timestamp");
        }
        int p = i + 1;
        while (p < lastSpace) {
            int keyStart = p;
            while (p < lastSpace && s.charAt(p) != '=') {
                p += s.charAt(p) == '\\' ? 2 : 1;
            }
            if (p >= lastSpace || p == keyStart) {
                throw error(where, lineNo, keyStart - start + 1, s, start, end, "bad field");
            }
            String field = s.substring(keyStart, p);
            p++; // '='
            int valueStart = p;
            if (p < lastSpace && s.charAt(p) == '"') {
                p++;
                while (p < lastSpace && s.charAt(p) != '"') {
                    p += s.charAt(p) == '\\' ? 2 : 1;
                }
                if (p >= lastSpace) {
                    throw error(where, lineNo, valueStart - start + 1, s, start, end,
                            "unterminated string");
                }
                p++; // closing quote: string field, raw tier only
            } else {
                while (p < lastSpace && s.charAt(p) != ',') {
                    p++;
                }
                if (p == valueStart) {
                    throw error(where, lineNo, valueStart - start + 1, s, start, end,
                            "empty value");
                }
                double v;
                boolean numeric = true;
                char last = s.charAt(p - 1);
                char first = s.charAt(valueStart);
                try {
                    if (last == 'i') {
                        v = (double) Long.parseLong(s, valueStart, p - 1, 10);
                    } else if (last == 'u') {
                        v = unsignedToDouble(Long.parseUnsignedLong(s, valueStart, p - 1, 10));
                    } else if (first == 't' || first == 'T' || first == 'f' || first == 'F') {
                        v = 0.0; // boolean: raw tier only
                        numeric = false;
                    } else {
                        v = Double.parseDouble(s.substring(valueStart, p));
                        if (!Double.isFinite(v)) {
                            throw new NumberFormatException("not finite");
                        }
                    }
                } catch (NumberFormatException e) {
                    throw error(where, lineNo, valueStart - start + 1, s, start, end,
                            "bad value");
                }
                if (numeric) {
                    out.collect(Element.sample(series + '\n' + field, ts, v));
                }
            }
            if (p < lastSpace) {
                if (s.charAt(p) != ',') {
                    throw error(where, lineNo, p - start + 1, s, start, end, "expected ','");
                }
                p++;
            }
        }
        return ts;
    }

    private static double unsignedToDouble(long u) {
        double d = (double) (u >>> 1) * 2.0;
        return d + (u & 1L);
    }
}
