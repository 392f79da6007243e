"""Security groups on Linux bridge ports with nftables (see render.py for the layout).

render.py: pure nft text; actual.py: the loaded ruleset parsed back; planner.py: pure
diff -> one transaction + conntrack deletions; nft.py: running nft in a namespace;
driver.py: NftFirewall.
"""

from drivers.firewall.driver import FirewallError, NftFirewall, SyncResult
from drivers.firewall.planner import FirewallPlan, FlushSpec, NftOp

__all__ = ["FirewallError", "FirewallPlan", "FlushSpec", "NftFirewall", "NftOp", "SyncResult"]
