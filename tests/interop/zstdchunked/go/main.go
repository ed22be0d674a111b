// csref converts a tar (stdin) with containers/storage's own zstd:chunked compressor
// (pkg/chunked/compressor, as Debian packages it) and prints the TOC JSON, so tests can compare the
// chunking (chunk offsets, sizes, digests and types) with ours.
//
//	csref < layer.tar > toc.json
package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/containers/storage/pkg/chunked/compressor"
	"github.com/klauspost/compress/zstd"
)

func fail(err error) {
	fmt.Fprintln(os.Stderr, "csref:", err)
	os.Exit(1)
}

func main() {
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
	// Once the compressor has read the end-of-archive it may answer a Write with (0, nil) while it
	// drains the rest (padding): that is the end, not a short write.
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
