// Command lazycat is the program the lazy-pull tests run inside a container: for every path it is given
// it prints "<path> <size> <sha256>" after reading the whole file, or "<path> missing". It uses the
// standard library only, so it builds as one static binary that needs nothing else in the image.
package main

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
)

func main() {
	status := 0
	for _, path := range os.Args[1:] {
		f, err := os.Open(path)
		if err != nil {
			fmt.Printf("%s missing\n", path)
			status = 1
			continue
		}
		h := sha256.New()
		n, err := io.Copy(h, f)
		f.Close()
		if err != nil {
			fmt.Printf("%s unreadable: %v\n", path, err)
			status = 1
			continue
		}
		fmt.Printf("%s %d %x\n", path, n, h.Sum(nil))
	}
	os.Exit(status)
}
