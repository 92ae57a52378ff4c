package delivery

// SetHoldLimits sets the bounds of a queue's holds for a test and returns
// a function that restores them.
func SetHoldLimits(holds, held int) (restore func()) {
	h, j := maxHolds, maxHeld
	maxHolds, maxHeld = holds, held
	return func() { maxHolds, maxHeld = h, j }
}
