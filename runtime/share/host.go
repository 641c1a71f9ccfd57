package share

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// HostMemoryMB reads the host's memory (MemTotal) from meminfo, normally
// /proc/meminfo.
func HostMemoryMB(meminfo string) (int64, error) {
	f, err := os.Open(meminfo)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kb, err := strconv.ParseInt(fields[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s: MemTotal %q: %w", meminfo, fields[1], err)
			}
			return kb >> 10, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s has no MemTotal", meminfo)
}
