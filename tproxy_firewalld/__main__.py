from tproxy_firewalld.cli import main

main()
