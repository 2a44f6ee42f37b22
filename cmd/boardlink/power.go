package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func newPowerCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "power BOARD on|off|cycle",
		Short: "Switch a board's power through the lab service",
		Long: `power asks the lab service (--server or BOARDLINK_SERVER) to switch the
board's power with the driver its config gives it (a command for a PDU or
a relay, QMP for a QEMU board). A board another lease holds is refused;
under 'boardlink lease' the lease in BOARDLINK_LEASE is used.`,
		Example: `  boardlink --server http://lab:7300 power sim-001 cycle`,
		Args:    exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch args[1] {
			case "on", "off", "cycle":
			default:
				return &usageError{fmt.Errorf("power %s: want on, off or cycle, not %q", args[0], args[1])}
			}
			c, err := g.serviceClient()
			if err != nil {
				return err
			}
			if err := c.Power(cmd.Context(), args[0], os.Getenv("BOARDLINK_LEASE"), args[1]); err != nil {
				return serviceFailure(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: power %s\n", args[0], args[1])
			return nil
		},
	}
}
