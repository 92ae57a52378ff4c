package admin

import (
	"testing"

	"github.com/fanout/fanout/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }
