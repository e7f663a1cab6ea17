package io.metricsflow.bench;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.util.Collector;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.common.header.Header;

/**
 * Decodes one {@code lp1} record (docs/message-format.md) into its numeric samples plus the
 * record itself (for the raw tier). Headers are checked as metricsflow's decoder checks them:
 * {@code mf-format} must be {@code lp1}, {@code mf-db} must be present and non-empty,
 * {@code mf-received-ns} (optional) an integer. A bad
 * record fails the job with an {@link IOException} naming the partition, offset, line, column
 * and text (nothing is skipped silently).
 */
public final class Lp1Deserializer implements KafkaRecordDeserializationSchema<Element> {
    private static final long serialVersionUID = 1L;

    @Override
    public void deserialize(ConsumerRecord<byte[], byte[]> record, Collector<Element> out)
            throws IOException {
        String where = record.topic() + "-" + record.partition() + "@" + record.offset();
        Header format = record.headers().lastHeader("mf-format");
        if (format == null) {
            throw new IOException(where + ": header mf-format missing (expected lp1)");
        }
        String version = new String(format.value(), StandardCharsets.UTF_8);
        if (!"lp1".equals(version)) {
            throw new IOException(where + ": header mf-format=" + version + " (expected lp1)");
        }
        Header db = record.headers().lastHeader("mf-db");
        if (db == null || db.value() == null || db.value().length == 0) {
            throw new IOException(where + ": header mf-db missing or empty");
        }
        Header received = record.headers().lastHeader("mf-received-ns");
        if (received != null && received.value() != null && received.value().length > 0) {
            String ns = new String(received.value(), StandardCharsets.UTF_8);
            try {
                Long.parseLong(ns);
            } catch (NumberFormatException e) {
                throw new IOException(where + ": header mf-received-ns=" + ns
                        + " is not an integer");
            }
        }
        byte[] value = record.value();
        if (value == null || value.length == 0) {
            throw new IOException(where + ": empty record value");
        }
        String text;
        try {
            text = StandardCharsets.UTF_8.newDecoder()
                    .onMalformedInput(CodingErrorAction.REPORT)
                    .onUnmappableCharacter(CodingErrorAction.REPORT)
                    .decode(ByteBuffer.wrap(value))
                    .toString();
        } catch (CharacterCodingException e) {
            throw new IOException(where + ": record value is not UTF-8: " + e);
        }
        long minNs = LineProtocol.parse(text, where, out);
        out.collect(Element.raw(value, minNs));
    }

    @Override
    public TypeInformation<Element> getProducedType() {
        return TypeInformation.of(Element.class);
    }
}
