// csref converts a tar (stdin) with containers/storage's own zstd:chunked compressor
// (pkg/chunked/compressor, as Debian packages it) and prints the TOC JSON, so tests can compare the
// chunking (chunk offsets, sizes, digests and types) with ours.
//
//	csref < layer.tar > toc.json
//
// For the benchmark (bench/bench_estargz.py), it converts a file and prints the time it took:
//
//	csref convert LEVEL IN OUT   -> {"seconds": ..., "compressed_size": ...}
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/containers/storage/pkg/chunked/compressor"
	"github.com/klauspost/compress/zstd"
)

func fail(err error) {
	fmt.Fprintln(os.Stderr, "csref:", err)
	os.Exit(1)
}

// writeAll feeds the compressor; once it has read the end-of-archive it may answer a Write with (0, nil)
// while it drains the rest (padding): that is the end, not a short write.
func writeAll(w io.Writer, input []byte) {
	for len(input) > 0 {
		n, err := w.Write(input)
		if err != nil {
			fail(err)
		}
		if n == 0 {
			break
		}
		input = input[n:]
	}
}

func convert(args []string) {
	if len(args) != 3 {
		fail(fmt.Errorf("usage: csref convert LEVEL IN OUT"))
	}
	level, err := strconv.Atoi(args[0])
	if err != nil {
		fail(err)
	}
	start := time.Now()
	in, err := os.Open(args[1])
	if err != nil {
		fail(err)
	}
	out, err := os.Create(args[2])
	if err != nil {
		fail(err)
	}
	counter := &countingWriter{w: out}
	w, err := compressor.ZstdCompressor(counter, map[string]string{}, &level)
	if err != nil {
		fail(err)
	}
	buf := make([]byte, 1<<20)
	for {
		n, err := in.Read(buf)
		writeAll(w, buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			fail(err)
		}
	}
	if err := w.Close(); err != nil {
		fail(err)
	}
	if err := out.Close(); err != nil {
		fail(err)
	}
	json.NewEncoder(os.Stdout).Encode(map[string]interface{}{
		"seconds": time.Since(start).Seconds(), "compressed_size": counter.n,
	})
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "convert" {
		convert(os.Args[2:])
		return
	}
	var blob bytes.Buffer
	annotations := map[string]string{}
	level := 1
	w, err := compressor.ZstdCompressor(&blob, annotations, &level)
	if err != nil {
		fail(err)
	}
	input, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	writeAll(w, input)
	if err := w.Close(); err != nil {
		fail(err)
	}
	// The manifest position annotation ("offset:length:uncompressed length:type") has had two key
	// prefixes over the library's history; take whichever this version writes.
	var position string
	for key, value := range annotations {
		if strings.HasSuffix(key, "zstd-chunked.manifest-position") {
			position = value
		}
	}
	parts := strings.Split(position, ":")
	if len(parts) < 2 {
		fail(fmt.Errorf("no manifest position in %v", annotations))
	}
	offset, err := strconv.Atoi(parts[0])
	if err != nil {
		fail(err)
	}
	length, err := strconv.Atoi(parts[1])
	if err != nil {
		fail(err)
	}
	dec, err := zstd.NewReader(nil)
	if err != nil {
		fail(err)
	}
	manifest, err := dec.DecodeAll(blob.Bytes()[offset:offset+length], nil)
	if err != nil {
		fail(err)
	}
	os.Stdout.Write(manifest)
}
