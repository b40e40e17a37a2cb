package fs

import (
	"testing"
	"time"
)

// BenchmarkSourceRead measures the store alone: reading W_0 (warm) and the
// whole checkpoint after dropping the page cache (cold), in 1 MiB reads, with
// 1 and 4 readers per read.
func BenchmarkSourceRead(b *testing.B) {
	d := getBench(b)
	fr, err := d.source("disk").OpenCheckpoint("disk", 0)
	if err != nil {
		b.Fatal(err)
	}
	defer fr.Close()
	t0 := time.Now()
	if _, err := fr.DataFrames(); err != nil {
		b.Fatal(err)
	}
	b.Logf("frame map of %d frames: %v", d.frames, time.Since(t0))
	buf := make([]byte, 1<<20)
	for _, k := range []int{1, 4} {
		b.Run("ws-warm/readers="+itoa(k), func(b *testing.B) {
			work, err := fr.WorkingSetPieces(0, d.frames, pieceFrames)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(framesOf(work) * pageSize))
			for range b.N {
				for _, pc := range work {
					for _, e := range pc.Extents {
						if err := readSplit(e.Start, buf[:(e.End-e.Start)*pageSize], k, fr.ReadFrames); err != nil {
							b.Fatal(err)
						}
					}
				}
			}
		})
		b.Run("all-cold/readers="+itoa(k), func(b *testing.B) {
			b.SetBytes(int64(d.frames * pageSize))
			for range b.N {
				b.StopTimer()
				dropCaches(b)
				b.StartTimer()
				for p := uint64(0); p < d.frames; p += uint64(len(buf) / pageSize) {
					if err := readSplit(p, buf, k, fr.ReadFrames); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
