"""The built-in demo: two network namespaces, a veth pair, real traffic between them."""
