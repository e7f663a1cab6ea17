package io.metricsflow.bench;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayDeque;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionException;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.zip.Deflater;
import java.util.zip.GZIPOutputStream;
import org.apache.flink.api.common.operators.ProcessingTimeService;
import org.apache.flink.api.connector.sink2.Sink;
import org.apache.flink.api.connector.sink2.SinkWriter;
import org.apache.flink.api.connector.sink2.WriterInitContext;

/**
 * A batched InfluxDB v1 {@code /write?db=&rp=&precision=n} sink (Sink V2), like metricsflow's:
 * elements are line-protocol chunks (one or more lines, no trailing newline) appended to a
 * buffer that is sealed into one gzip (level 1) request at {@code maxLines} elements or
 * {@code maxBytes} bytes or every {@code flushMs}; requests are sent asynchronously (at most
 * {@code maxInFlight} outstanding: beyond that the task waits = backpressure). {@link
 * #flush(boolean)} runs before every checkpoint barrier is forwarded and waits for every
 * request, so a completed checkpoint means everything before it is in InfluxDB (at-least-once;
 * InfluxDB writes are idempotent overwrites of the same points, so a replay after a failure
 * converges to the same rows). 5xx and connection errors are retried with backoff; any other
 * status fails the job with InfluxDB's message.
 */
public final class InfluxWriteSink implements Sink<byte[]> {
    private static final long serialVersionUID = 1L;

    private final String url;
    private final String db;
    private final String rp;
    private final int maxLines;
    private final int maxBytes;
    private final long flushMs;
    private final int maxInFlight;

    public InfluxWriteSink(
            String url, String db, String rp, int maxLines, int maxBytes, long flushMs,
            int maxInFlight) {
        this.url = url;
        this.db = db;
        this.rp = rp;
        this.maxLines = maxLines;
        this.maxBytes = maxBytes;
        this.flushMs = flushMs;
        this.maxInFlight = maxInFlight;
    }

    @Override
    public SinkWriter<byte[]> createWriter(WriterInitContext context) {
        return new Writer(context.getProcessingTimeService());
    }

    private final class Writer implements SinkWriter<byte[]> {
        private final ProcessingTimeService timers;
        private final HttpClient client;
        private final URI uri;
        private final ByteArrayOutputStream buffer = new ByteArrayOutputStream(1 << 20);
        private final ArrayDeque<CompletableFuture<Void>> inFlight = new ArrayDeque<>();
        private int elements;

        Writer(ProcessingTimeService timers) {
            this.timers = timers;
            this.client = HttpClient.newBuilder()
                    .version(HttpClient.Version.HTTP_1_1)
                    .connectTimeout(Duration.ofSeconds(10))
                    .build();
            this.uri = URI.create(url + "/write?db=" + enc(db) + "&rp=" + enc(rp)
                    + "&precision=n");
            schedule();
        }

        private void schedule() {
            timers.registerTimer(timers.getCurrentProcessingTime() + flushMs, t -> {
                if (elements > 0) {
                    seal();
                }
                schedule();
            });
        }

        @Override
        public void write(byte[] element, Context context) throws IOException {
            if (elements > 0) {
                buffer.write('\n');
            }
            buffer.write(element, 0, element.length);
            elements++;
            if (elements >= maxLines || buffer.size() >= maxBytes) {
                seal();
            }
        }

        @Override
        public void flush(boolean endOfInput) throws IOException {
            if (elements > 0) {
                seal();
            }
            while (!inFlight.isEmpty()) {
                await(inFlight.removeFirst());
            }
        }

        private void seal() throws IOException {
            byte[] body = gzip(buffer);
            buffer.reset();
            elements = 0;
            while (!inFlight.isEmpty() && inFlight.peekFirst().isDone()) {
                await(inFlight.removeFirst());
            }
            while (inFlight.size() >= maxInFlight) {
                await(inFlight.removeFirst());
            }
            inFlight.addLast(send(body, 0));
        }

        private CompletableFuture<Void> send(byte[] body, int attempt) {
            HttpRequest request = HttpRequest.newBuilder(uri)
                    .timeout(Duration.ofSeconds(60))
                    .header("Content-Encoding", "gzip")
                    .header("Content-Type", "text/plain; charset=utf-8")
                    .POST(HttpRequest.BodyPublishers.ofByteArray(body))
                    .build();
            return client.sendAsync(request, HttpResponse.BodyHandlers.ofString())
                    .handle((response, error) -> {
                        boolean retriable = error != null || response.statusCode() >= 500;
                        if (!retriable && response.statusCode() == 204) {
                            return CompletableFuture.<Void>completedFuture(null);
                        }
                        if (!retriable || attempt >= 20) {
                            String why = error != null ? error.toString()
                                    : response.statusCode() + " " + response.body();
                            return CompletableFuture.<Void>failedFuture(new IOException(
                                    "InfluxDB write db=" + db + " rp=" + rp + " failed after "
                                            + (attempt + 1) + " attempt(s): " + why));
                        }
                        long backoffMs = Math.min(5_000L, 100L << Math.min(attempt, 6));
                        return CompletableFuture.supplyAsync(() -> (Void) null,
                                        CompletableFuture.delayedExecutor(
                                                backoffMs, TimeUnit.MILLISECONDS))
                                .thenCompose(ignored -> send(body, attempt + 1));
                    })
                    .thenCompose(f -> f);
        }

        private void await(CompletableFuture<Void> future) throws IOException {
            try {
                future.get();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new IOException("interrupted while writing to InfluxDB", e);
            } catch (ExecutionException | CompletionException e) {
                Throwable cause = e.getCause() != null ? e.getCause() : e;
                throw cause instanceof IOException io ? io : new IOException(cause);
            }
        }

        @Override
        public void close() throws Exception {
            flush(true);
        }
    }

    private static String enc(String s) {
        return URLEncoder.encode(s, StandardCharsets.UTF_8);
    }

    private static byte[] gzip(ByteArrayOutputStream buffer) {
        ByteArrayOutputStream out = new ByteArrayOutputStream(buffer.size() / 4 + 64);
        try (GZIPOutputStream gz = new GZIPOutputStream(out, 1 << 16) {
            {
                def.setLevel(Deflater.BEST_SPEED);
            }
        }) {
            buffer.writeTo(gz);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return out.toByteArray();
    }
}
