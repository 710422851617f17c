const encoder = new TextEncoder();
const stream = ReadableStream.from(sales.slice(0, 3)).pipeThrough(
  new TransformStream<Sale, Uint8Array>({
    transform(sale, controller) {
      controller.enqueue(encoder.encode(JSON.stringify(sale) + "\n"));
    },
  }),
);
const ndjson = await new Response(stream).text();
