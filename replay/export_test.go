package replay

// The black-box tests of package replay_test check these steps of Bench and
// QEMU on their own.
var (
	ParseMode   = parseMode
	ResolveQEMU = resolveQEMU
	QEMUArgs    = qemuArgs
)
