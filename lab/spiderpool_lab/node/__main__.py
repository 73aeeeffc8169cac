from spiderpool_lab.node.agent import main

main()
