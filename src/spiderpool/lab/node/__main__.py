from spiderpool.lab.node.agent import main

main()
